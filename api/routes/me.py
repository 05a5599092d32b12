"""GET /me: who the token is and what it may do, so a client (the dashboard) shows only what it can use."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from api.auth import ADMIN, COMMAND, READ, WRITE
from api.deps import Anyone

router = APIRouter()


class Me(BaseModel):
    subject: str
    scopes: list[str]
    may_read: bool
    may_write: bool
    may_write_commands: bool  # create or edit command tasks (tasks:command, with tasks:write)
    admin: bool


@router.get("/me", response_model=Me)
async def me(who: Anyone) -> Me:
    return Me(
        subject=who.subject,
        scopes=sorted(who.scopes),
        may_read=who.may(READ),
        may_write=who.may(WRITE),
        may_write_commands=who.may(WRITE) and who.may(COMMAND),
        admin=ADMIN in who.scopes,
    )
