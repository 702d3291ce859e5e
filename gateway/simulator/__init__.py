"""A faithful stand-in for Meta's WhatsApp Cloud API calling surface and a caller's phone.

- ``cloud_api``: the Graph ``/calls`` endpoint and signed webhooks (:class:`CloudApiSimulator`),
  one :class:`SimulatedCall` per call;
- ``phone``: the WhatsApp user's phone, a real WebRTC peer (:class:`SimulatedPhone`);
- ``audio``: tones and what was heard, in words; ``transcript``: the call's story;
- ``control`` / ``cli``: call scripts, the ``/_sim/`` control API, ``sim serve|call``;
- ``media``: voicemail, recordings and transcripts with their 5-minute URLs, media uploads;
  ``account_events``: ``account_update`` / ``account_settings_update`` notices
  (docs/meta-2026-settings-events.md).

Truth is docs/meta-calling.md and its payloads, never what the gateway does.
"""
