"""The gateway's exceptions: one tree, so a caller catches a branch without knowing every leaf.

The whole hierarchy (leaves live beside the code that raises them, and keep their import paths)::

    GatewayError
    ├── BadInput                  text from outside that the gateway refuses to use
    │   ├── ConfigError           gateway/config.py        the YAML (every bad key listed)
    │   ├── StrictJsonError       gateway/strict_json.py   a JSON body (ValueError too)
    │   ├── MalformedWebhook      gateway/whatsapp/events.py  not a webhook (ValueError too)
    │   ├── BodyTooLarge          gateway/whatsapp/webhook.py  over the body cap: 413
    │   └── SdpError              gateway/media/webrtc.py  Meta's SDP (ValueError too)
    ├── CapacityExhausted         no room for one more call
    │   └── PortsExhausted        gateway/media/ports.py   media.rtp_ports used up
    ├── MetaRefused               Meta's Cloud API refused a request, or did not answer
    │   └── GraphError            gateway/whatsapp/graph.py  (``.retryable``, ``.code``)
    ├── AsteriskRefused           Asterisk refused an action, or AMI is not there
    │   └── AmiError              gateway/asterisk/ami_errors.py (import from .ami)
    │       ├── AmiNotConnected   no logged-in connection (or it dropped mid-action)
    │       ├── AmiAuthError      Login refused (secret, or manager.conf's permit/deny)
    │       └── AmiUnsafeValue    a header value that could write AMI of its own: not sent
    ├── MediaFailed               the WhatsApp media leg cannot be set up
    │   └── NoCandidates          gateway/media/webrtc.py  no ICE candidate to offer
    ├── StorageError              the call store or the permission ledger
    │   ├── StoreUnavailable      gateway/store/backend.py  cannot open (URL, server, driver)
    │   └── DatabaseClosed        gateway/sqlite_thread.py
    │       ├── StoreClosed       gateway/store/backend.py
    │       └── LedgerClosed      gateway/calls/permissions/storage.py
    ├── CallFailure               gateway/calls/ending.py  a call's set-up failed, with its What
    │   └── OriginateFailed       gateway/calls/base.py    Asterisk made no usable channel
    ├── CallEnded                 gateway/calls/base.py    the call ended while being set up
    └── SetupError                this machine cannot run what was asked
        ├── ResourceMissing       gateway/resources.py     a shipped file is missing
        ├── DemoError             gateway/sandbox/demo.py
        └── LocalAsteriskError    gateway/sandbox/local_asterisk.py

What a call does next is decided per branch in one place, :func:`gateway.calls.ending.what_for`
(bad SDP: reject; capacity or media: reject as capacity; Meta: by Graph code; Asterisk: no AMI
or originate failed), and from there by the one ending table (docs/call-ending.md).

Leaves that were a ``ValueError``, ``RuntimeError`` or ``FileNotFoundError`` still are, so
``except ValueError`` written before this tree still catches them. The simulator
(gateway/simulator/) plays Meta and a phone, not the gateway: its exceptions stay outside.
tests/unit/test_errors.py holds this docstring to the classes.
"""

from __future__ import annotations

__all__ = [
    "AsteriskRefused",
    "BadInput",
    "CapacityExhausted",
    "GatewayError",
    "MediaFailed",
    "MetaRefused",
    "SetupError",
    "StorageError",
]


class GatewayError(Exception):
    """Base of every exception the gateway raises on purpose. Anything else that escapes is a
    bug (a call that ends on one is counted as ``gateway error``)."""


class BadInput(GatewayError):
    """Text from outside (config, a webhook, an API body, an SDP) that cannot be used; the
    message names the field. Never retried: the same input fails the same way."""


class CapacityExhausted(GatewayError):
    """The gateway is full: an inbound call is rejected, an outbound one fails at once."""


class MetaRefused(GatewayError):
    """A Graph request failed: Meta refused it (an error code) or did not answer in time."""


class AsteriskRefused(GatewayError):
    """An AMI action failed: Asterisk refused it, or there is no connection to ask on."""


class MediaFailed(GatewayError):
    """The WhatsApp media leg (ICE, DTLS-SRTP) cannot be set up for this call."""


class StorageError(GatewayError):
    """The call store or the permission ledger cannot be used (closed, or not open yet)."""


class SetupError(GatewayError):
    """This machine cannot run what was asked (the demo, a local Asterisk, a shipped file);
    the message is one line saying what to do."""
