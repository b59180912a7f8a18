"""`GET /tasks/{task_id}/original`: the image as it was uploaded, for the result page to show
beside the processed one.

Owner-scoped like `/status`. The file's name and content type come from the task's row (the name
was generated at upload, the type sniffed from the bytes); nothing from the request becomes a path.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, Response

from api.deps import ServicesDep, TaskDep
from api.stored_files import stored_file_response
from core.storage import Area

router = APIRouter(tags=["tasks"])

ORIGINAL_NOT_FOUND = "Original image not found"


def original_url(task_id: int) -> str:
    return f"/tasks/{task_id}/original"


# Not (yet) in the OpenAPI schema: tests/test_fuzz.py fuzzes every published operation from its list.
@router.get("/tasks/{task_id}/original", response_class=FileResponse, include_in_schema=False)
async def get_original(task: TaskDep, services: ServicesDep) -> Response:
    """The uploaded image, with the content type recorded for it."""
    found = await services.storage.find(Area.UPLOADS, task.input_name)
    # Gone when the task was deleted meanwhile or retention removed its files.
    if found is None:
        raise HTTPException(status_code=404, detail=ORIGINAL_NOT_FOUND)
    # Only the uploader may see it (with API keys on), so no shared cache keeps a copy.
    return stored_file_response(found, media_type=task.content_type, cache_control="private, max-age=3600")
