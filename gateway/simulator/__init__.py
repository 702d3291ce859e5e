"""A faithful stand-in for Meta's WhatsApp Cloud API calling surface and a caller's phone.

- ``cloud_api``: :class:`CloudApiSimulator`, the server that holds the parts below, each given
  explicit references to the parts it uses (no part reaches into another's state);
- ``waba``: the business account (numbers, settings, users, Meta's counters);
  ``runtime``: the clock seam, background tasks and Meta's timings;
- ``graph_api``: request log, token/version/number checks, injected faults; ``calls_api``:
  ``POST /calls``; ``account``: call permissions, settings, messages;
- ``call`` / ``calls``: one :class:`SimulatedCall`, the registry, the phones, what Meta does
  when a call ends; ``user_calls`` / ``outbound``: calls from a user, calls from the business;
- ``webhooks`` / ``payloads``: signed delivery with retries, and the bodies;
  ``permission_replies``: how a user's call permission changes and the replies saying so;
- ``phone``: the WhatsApp user's phone, a real WebRTC peer (:class:`SimulatedPhone`);
- ``audio``: tones and what was heard, in words; ``transcript``: the call's story;
- ``script`` / ``control`` / ``cli``: call scripts, the ``/_sim/`` control API, ``sim
  serve|call``;
- ``media``: voicemail, recordings and transcripts with their 5-minute URLs, media uploads;
  ``account_events``: ``account_update`` / ``account_settings_update`` notices
  (docs/meta-2026-settings-events.md).

Truth is docs/meta-calling.md and its payloads, never what the gateway does.
"""
