"""Bodies of the ``POST /{PHONE_NUMBER_ID}/messages`` requests that drive calling
(docs/meta-calling.md §5): the call-permission request and the voice-call button.

Checked here, before any request, against Meta's documented bounds, so a CRM or an admin gets
an error naming the field (``ValueError("display_text: ...")``) instead of Meta's error 100.
"""

from __future__ import annotations

from typing import Any

VOICE_CALL_DISPLAY_TEXT_MAX = 20  # §5
VOICE_CALL_TTL_MINUTES = (1, 43200)  # §5
VOICE_CALL_PAYLOAD_MAX = 512  # §5
INTERACTIVE_BODY_MAX = 1024  # interactive message body text (Cloud API messages reference)


def _check_body_text(body_text: str | None, required: bool) -> str | None:
    if body_text is None or body_text == "":
        if required:
            raise ValueError("body_text: must not be empty")
        return None
    if not isinstance(body_text, str):
        raise ValueError(f"body_text: must be a string, got {type(body_text).__name__}")
    if len(body_text) > INTERACTIVE_BODY_MAX:
        raise ValueError(f"body_text: must be at most {INTERACTIVE_BODY_MAX} characters, "
                         f"got {len(body_text)}")
    return body_text


def permission_request_body(user: str, body_text: str | None) -> dict[str, Any]:
    """The free-form ``call_permission_request`` interactive message (§5). It can only be sent
    inside the 24 h customer-service window; outside it Meta wants a template."""
    text = _check_body_text(body_text, required=False)
    interactive: dict[str, Any] = {"type": "call_permission_request",
                                   "action": {"name": "call_permission_request"}}
    if text:
        interactive["body"] = {"text": text}
    return {"recipient_type": "individual", "to": user, "type": "interactive",
            "interactive": interactive}


def voice_call_body(user: str, body_text: str, display_text: str = "Call Now",
                    ttl_minutes: int = 10080, payload: str | None = None) -> dict[str, Any]:
    """The ``voice_call`` interactive message (§5); ValueError names the invalid field."""
    text = _check_body_text(body_text, required=True)
    if not isinstance(display_text, str) or not display_text.strip():
        raise ValueError("display_text: must not be empty")
    if len(display_text) > VOICE_CALL_DISPLAY_TEXT_MAX:
        raise ValueError(f"display_text: must be at most {VOICE_CALL_DISPLAY_TEXT_MAX} "
                         f"characters, got {len(display_text)}")
    low, high = VOICE_CALL_TTL_MINUTES
    if isinstance(ttl_minutes, bool) or not isinstance(ttl_minutes, int) \
            or not low <= ttl_minutes <= high:
        raise ValueError(f"ttl_minutes: must be a whole number from {low} to {high}, "
                         f"got {ttl_minutes!r}")
    parameters: dict[str, Any] = {"display_text": display_text, "ttl_minutes": ttl_minutes}
    if payload is not None:
        if not isinstance(payload, str):
            raise ValueError(f"payload: must be a string, got {type(payload).__name__}")
        if len(payload) > VOICE_CALL_PAYLOAD_MAX:
            raise ValueError(f"payload: must be at most {VOICE_CALL_PAYLOAD_MAX} characters, "
                             f"got {len(payload)}")
        parameters["payload"] = payload
    return {"recipient_type": "individual", "to": user, "type": "interactive",
            "interactive": {"type": "voice_call", "body": {"text": text},
                            "action": {"name": "voice_call", "parameters": parameters}}}
