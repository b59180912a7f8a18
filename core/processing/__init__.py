"""What a task makes: operations, presets and outputs, validated once at upload and stored on the row.

A client chooses with three optional form fields of `POST /upload`:

- `preset`: a name (`default`, `thumbnail`, `web`, ...; operators add their own in PRESETS);
- `ops`: a JSON list of operations applied in order, each `{"op": NAME, ...params}`;
- `outputs`: a JSON object of output name -> preset name or ops list, for several derivatives of
  one upload (decoded once).

Whatever was chosen is resolved into a `Processing`: a list of outputs, each an explicit ops list.
That resolved form is what the row stores and what the worker runs, so a preset edited later does
not change a task already queued, and the worker never needs the presets at all.

EXIF orientation is applied before any operation (it is not an operation). An output's encoding is
its last `format` operation, or the input's own format when it has none.

One module per owner; import from the one that owns the name:

- `operations`: the operation models, their bounds, and how a bad list is reported;
- `sizes`: the pixel size operations produce (the worker resizes and crops by these numbers);
- `cost`: what an output costs in pixels at every step and frame (checked at upload and again by
  the worker against MAX_OUTPUT_PIXELS);
- `outputs`: `Processing` and `Output` (the `processing` column), `OutputRecord` (the `outputs` one);
- `presets`: the built-in presets and the PRESETS setting;
- `forms`: the upload's `preset` / `ops` / `outputs` fields resolved into a `Processing`.
"""
