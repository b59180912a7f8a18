"""`GET /tasks/{task_id}/original`: the image as it was uploaded, for the result page to show
beside the processed one.

Owner-scoped like `/status`. The file's name and content type come from the task's row (the name
was generated at upload, the type sniffed from the bytes); nothing from the request becomes a path.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, Response

from api.deps import ServicesDep, TaskDep
from api.openapi import IMAGE_CONTENT_TYPES, STORED_FILE_ANSWERS, error, errors
from api.stored_files import stored_file_answer
from core.storage import Area

router = APIRouter(tags=["tasks"])

ORIGINAL_NOT_FOUND = "Original image not found"


def original_url(task_id: int) -> str:
    return f"/tasks/{task_id}/original"


@router.get(
    "/tasks/{task_id}/original",
    response_class=FileResponse,
    responses={
        200: {
            "content": {mt: {"schema": {"type": "string", "format": "binary"}} for mt in IMAGE_CONTENT_TYPES},
            "description": "The uploaded image, as it was uploaded.",
        },
        **STORED_FILE_ANSWERS,
        **errors(401, 503),
        404: error(
            "No such task (or another API key's), or its files were removed (deleted, or by retention).",
            ORIGINAL_NOT_FOUND,
        ),
    },
)
async def get_original(task: TaskDep, services: ServicesDep, request: Request) -> Response:
    """The uploaded image, with the content type recorded for it."""
    found = await services.storage.find(Area.UPLOADS, task.input_name)
    # Gone when the task was deleted meanwhile or retention removed its files.
    if found is None:
        raise HTTPException(status_code=404, detail=ORIGINAL_NOT_FOUND)
    # Only the uploader may see it (with API keys on), so no shared cache keeps a copy.
    return await stored_file_answer(
        services.storage,
        services.settings,
        Area.UPLOADS,
        task.input_name,
        found,
        request=request,
        media_type=task.content_type,
        cache_control="private, max-age=3600",
    )
