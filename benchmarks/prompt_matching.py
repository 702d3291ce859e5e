"""How long prompt recognition (gateway/simulator/prompts.py) takes, and whether it is right.

Loads Asterisk's own sound files (the sandbox chroot's, or ``--sounds DIR``) cold (decoding
every file) and warm (from the on-disk cache), then recognises stretches of "heard" audio made
of real prompts back to back (16 kHz, quieter, over a noise floor, as a phone would get them),
and prints the time per match and per second of audio, and how many prompts were named right.

    .venv/bin/python benchmarks/prompt_matching.py [--sounds /usr/share/asterisk/sounds/en]
        [--repeat 5] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.sandbox.local_asterisk import LocalAsterisk  # noqa: E402
from gateway.simulator import audio  # noqa: E402
from gateway.simulator.prompts import PromptLibrary, decode_sound, recognise  # noqa: E402

SEQUENCES = {
    "menu": ["hello", "vm-enter-num-to-call"],
    "code read back": ["you-entered", "digits/1", "digits/2", "digits/3", "digits/4"],
    "nine prompts": ["hello", "vm-enter-num-to-call", "you-entered", "digits/5", "digits/6",
                    "vm-goodbye", "pbx-invalid", "demo-echotest", "vm-nobodyavail"],
}


def heard(library: Path, names: list[str]) -> bytes:
    """The prompts back to back at 16 kHz, 6 dB quieter, over a -60 dBFS noise floor."""
    parts = []
    for name in names:
        path = next(library / f"{name}{ext}" for ext in (".gsm", ".wav", ".sln")
                    if (library / f"{name}{ext}").exists())
        parts.append(decode_sound(path))
    x = np.repeat(np.concatenate(parts) * 0.5, 2)
    x += np.random.default_rng(1).normal(0, audio.FULL_SCALE * 1e-3, x.size)
    return audio.to_pcm(x)


async def sounds_dir(given: str | None) -> Path:
    if given:
        return Path(given)
    asterisk = LocalAsterisk("bench-prompts")
    await asterisk.find_chroot()
    return asterisk.sounds_dir()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sounds", help="Asterisk's sound directory (default: the sandbox's)")
    parser.add_argument("--repeat", type=int, default=5, help="matches per stretch")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    directory = asyncio.run(sounds_dir(args.sounds))

    with tempfile.TemporaryDirectory() as cache:
        os.environ["XDG_CACHE_HOME"] = cache
        t = time.perf_counter()
        library = PromptLibrary(directory).load()
        cold = time.perf_counter() - t
        t = time.perf_counter()
        PromptLibrary(directory).load()
        warm = time.perf_counter() - t

    results = {"sounds": str(directory), "files": len(library.templates),
               "beep_hz": round(library.beep_hz, 1), "beep_s": round(library.beep_s, 3),
               "load_cold_s": round(cold, 2), "load_warm_s": round(warm, 3), "stretches": []}
    for label, names in SEQUENCES.items():
        pcm = heard(directory, names)
        seconds = len(pcm) / 2 / audio.RATE
        times, found = [], []
        for _ in range(args.repeat):
            t = time.perf_counter()
            found = recognise(pcm, 0.0, library)
            times.append(time.perf_counter() - t)
        named = [h.name for h in found if h.kind == "prompt"]
        results["stretches"].append({
            "stretch": label, "audio_s": round(seconds, 2),
            "match_ms_median": round(statistics.median(times) * 1000, 1),
            "match_ms_per_audio_s": round(statistics.median(times) * 1000 / seconds, 1),
            "prompts": len(names), "named_right": named == names, "named": named})
    if args.json:
        print(json.dumps(results))
        return 0
    print(f"{results['files']} sound files in {directory}; beep {results['beep_hz']} Hz, "
          f"{results['beep_s']} s")
    print(f"library load: {cold:.2f} s cold (decoding), {warm * 1000:.0f} ms warm (cache)")
    for r in results["stretches"]:
        print(f"  {r['stretch']:22} {r['audio_s']:5.1f} s audio: {r['match_ms_median']:7.1f} ms "
              f"per match ({r['match_ms_per_audio_s']:.1f} ms per audio second), "
              f"{'all ' + str(r['prompts']) + ' named right' if r['named_right'] else r['named']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
