"""Regenerate the speech clips in spacesim/client/clips/ (needs Debian's `flite`).

    apt-get install -y flite
    .venv/bin/python scripts/make_clips.py            # writes spacesim/client/clips/

Each sentence is synthesised by `flite` with one voice to a 16 kHz WAV, resampled
to 48 kHz mono with PyAV, followed by 0.3 s of silence (so a looping clip pauses
between sentences), encoded with libopus as 20 ms packets at 24 kbit/s and stored
as NAME.opuspk (format: spacesim/client/speaker.py); clips/transcripts.json maps
names to sentences. flite voices transcribe well with pocketsphinx (FACTS.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import av
import numpy as np

from spacesim.client.speaker import SAMPLE_RATE, encode_pcm, write_opuspk

# name: (flite voice, sentence) -- 3 to 6 seconds each.
CLIPS: dict[str, tuple[str, str]] = {
    "welcome": (
        "slt",
        "Welcome to the space. Today we are talking about the weather this summer.",
    ),
    "bridge": ("awb", "I think the new bridge across the river will open next spring."),
    "hands": ("rms", "Thank you all for joining. Please raise your hand if you want to speak."),
    "garden": ("kal16", "My garden is full of tomatoes and green beans this year."),
    "trip": ("slt", "Let me tell you a short story about my first trip to the mountains."),
}
SILENCE_S = 0.3
BIT_RATE = 24_000
OUT = Path(__file__).resolve().parent.parent / "spacesim" / "client" / "clips"


def synthesise(voice: str, text: str, wav: Path) -> None:
    flite = shutil.which("flite")
    if flite is None:
        raise SystemExit("flite not found: apt-get install -y flite")
    subprocess.run([flite, "-voice", voice, "-t", text, "-o", str(wav)], check=True)


def pcm48k(wav: Path) -> np.ndarray:
    """The WAV's audio as mono int16 samples at 48 kHz."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    chunks: list[np.ndarray] = []
    with av.open(str(wav)) as container:
        for frame in container.decode(audio=0):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
    for out in resampler.resample(None):
        chunks.append(out.to_ndarray().reshape(-1))
    return np.concatenate(chunks).astype(np.int16)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    transcripts: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (voice, text) in CLIPS.items():
            wav = Path(tmp) / f"{name}.wav"
            synthesise(voice, text, wav)
            pcm = pcm48k(wav)
            pcm = np.concatenate([pcm, np.zeros(round(SILENCE_S * SAMPLE_RATE), np.int16)])
            packets = encode_pcm(pcm, bit_rate=BIT_RATE)
            data = write_opuspk(packets)
            (args.out / f"{name}.opuspk").write_bytes(data)
            transcripts[name] = text
            print(f"{name}: {voice}, {len(packets) * 0.02:.2f} s, {len(data)} bytes")
    (args.out / "transcripts.json").write_text(
        json.dumps(transcripts, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )


if __name__ == "__main__":
    main()
