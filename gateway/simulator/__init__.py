"""A faithful stand-in for Meta's WhatsApp Cloud API calling surface and a caller's phone.

- ``cloud_api``: the Graph ``/calls`` endpoint and signed webhooks (:class:`CloudApiSimulator`),
  one :class:`SimulatedCall` per call;
- ``phone``: the WhatsApp user's phone, a real WebRTC peer (:class:`SimulatedPhone`);
- ``audio``: tones and what was heard, in words; ``transcript``: the call's story;
- ``control`` / ``cli``: call scripts, the ``/_sim/`` control API, ``sim serve|call``.

Truth is docs/meta-calling.md and its payloads, never what the gateway does.
"""
