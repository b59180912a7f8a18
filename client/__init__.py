"""`python -m client`: the imagequeue command-line client, for programs and people at a terminal.

A separate program from the server: it speaks only HTTP to the API (httpx and the standard
library; nothing from api/, worker/ or core/), so it can be copied and run anywhere.

- connection.py: the HTTP client (base URL, API key, timeouts) and server errors in words.
- uploads.py: many files at once, streamed from disk, optionally followed to done/failed.
- progress.py: the progress display on stderr (a live view on a terminal, plain lines otherwise).
- report.py: what goes to stdout: tables for people, JSON for programs.
- cli.py: arguments, commands and exit codes.
"""
