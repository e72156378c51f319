"""Pure parsers of what crosses the wire: response bodies and SSE streams, request-body facts,
header redaction. Bytes in, data out; nothing of ours but ``model``."""

from .redact import is_secret_header, redact_headers
from .request import model_from_body, session_from_body, speed_from_body
from .response import ResponseSummary, decode_content, read_response
from .sse import SSEDecoder, SSEEvent

__all__ = [
    "ResponseSummary",
    "SSEDecoder",
    "SSEEvent",
    "decode_content",
    "is_secret_header",
    "model_from_body",
    "read_response",
    "redact_headers",
    "session_from_body",
    "speed_from_body",
]
