"""What can go wrong on the AMI connection, as the gateway's exception tree names it.

A module of its own because both halves of the client raise them: the connection
(gateway/asterisk/ami_connection.py) and the header check (gateway/asterisk/ami_values.py).
Import them from :mod:`gateway.asterisk.ami`.
"""

from __future__ import annotations

from gateway.errors import AsteriskRefused


class AmiError(AsteriskRefused):
    """An AMI action failed; the message is Asterisk's own where it gave one."""


class AmiNotConnected(AmiError):
    """There is no logged-in AMI connection (or it dropped while the action was in flight)."""


class AmiAuthError(AmiError):
    """Asterisk refused the login: username/secret or the permit/deny ACL in manager.conf."""


class AmiUnsafeValue(AmiError):
    """An action header value holds a line break or another control character (or text that
    is not valid Unicode) and cannot be neutralised: sending it would let the text end the
    header and write AMI actions of its own, so the action is not sent at all."""

    def __init__(self, header: str, value: str):
        super().__init__(f"AMI header {header}: value {value[:60]!r} holds a control character "
                         "or invalid text; action not sent")
        self.header = header
