"""Phone-style test videos made with PyAV: H.264 + audio, a rotation, colour tags, 29.97 or variable frame rate."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

VFR_STEPS = (1 / 30, 1 / 10, 1 / 60)  # seconds between frames, cycled: a variable frame rate


def scene(n: int, w: int, h: int, seed: int = 0) -> np.ndarray:
    """A textured picture panning a few pixels a frame, uint8 (n, h, w, 3)."""
    rng = np.random.default_rng(seed)
    big = rng.integers(0, 256, (h // 4 + 8, (w + 3 * n) // 4 + 8, 3), dtype=np.uint8)
    big = np.kron(big, np.ones((4, 4, 1), np.uint8))
    return np.stack([big[:h, 3 * i:3 * i + w] for i in range(n)])


def make_video(path, frames: np.ndarray, *, rate=Fraction(30000, 1001), vfr: bool = False, rotation: int = 90,
               colour=(1, 1, 1, 1), audio: str | None = "aac", audio_extra: float = 0.0,
               crf: int = 12, sample_rate: int = 48000, metadata: dict | None = None) -> dict:
    """Write ``frames`` as H.264 (yuv420p, tagged ``colour`` = primaries, trc, matrix, range, converted with
    BT.709 tv range) with a display rotation and a sine audio track; returns the frames' times in seconds and
    the audio length."""
    c = av.open(str(path), "w")
    v = c.add_stream("libx264", rate=rate, options={"crf": str(crf), "preset": "ultrafast"})
    h, w = frames.shape[1:3]
    v.width, v.height, v.pix_fmt = w, h, "yuv420p"
    tb = Fraction(1, 90000) if vfr else 1 / Fraction(rate)
    v.codec_context.time_base = tb
    ctx = v.codec_context
    ctx.color_primaries, ctx.color_trc, ctx.colorspace, ctx.color_range = colour
    if rotation:
        v.set_display_rotation(rotation)
    a = None
    if audio:
        a = c.add_stream(audio, rate=sample_rate)
        a.layout = "stereo"
    c.metadata.update(metadata or {})
    times, t = [], 0.0
    for i, img in enumerate(frames):
        f = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(
            format="yuv420p", src_colorspace="itu709", dst_colorspace="itu709", src_color_range="JPEG",
            dst_color_range="MPEG")
        f.pts = int(round(t / tb)) if vfr else i
        f.time_base = tb
        times.append(float(f.pts * tb))
        for p in v.encode(f):
            c.mux(p)
        t += VFR_STEPS[i % len(VFR_STEPS)]
    for p in v.encode():
        c.mux(p)
    seconds = 0.0
    if a is not None:
        seconds = (times[-1] + (VFR_STEPS[(len(frames) - 1) % 3] if vfr else float(1 / Fraction(rate)))
                   + audio_extra)
        total, pos, size = int(seconds * sample_rate), 0, a.codec_context.frame_size or 960
        fmt = a.codec_context.format.name
        while pos < total:
            k = min(size, total - pos)
            x = (0.2 * np.sin(2 * np.pi * 440 * np.arange(pos, pos + k) / sample_rate)).astype(np.float32)
            planes = np.stack([x, x])
            if fmt.startswith("s16"):
                planes = (planes * 32767).astype(np.int16)
            if not fmt.endswith("p"):
                planes = planes.T.reshape(1, -1)
            af = av.AudioFrame.from_ndarray(planes, format=fmt, layout="stereo")
            af.sample_rate, af.pts = sample_rate, pos
            for p in a.encode(af):
                c.mux(p)
            pos += k
        for p in a.encode():
            c.mux(p)
    c.close()
    return {"times": times, "audio_seconds": seconds}


def stream_facts(path) -> dict:
    """What a player sees: every frame's time, rotation, colour tags, the audio codec and its duration."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        facts = {"audio": [(s.codec_context.name, s.codec_context.sample_rate) for s in c.streams.audio],
                 "subtitles": [s.codec_context.name for s in c.streams.subtitles],
                 "time_base": v.time_base}
        frames = list(c.decode(v))
        facts["times"] = [float(f.pts * f.time_base) for f in frames]
        first = frames[0]
        facts["rotation"] = first.rotation
        facts["colour"] = (int(first.color_primaries), int(first.color_trc), int(first.colorspace),
                           int(first.color_range))
    facts["audio_seconds"] = 0.0
    with av.open(str(path)) as c:
        if c.streams.audio:
            spans = [(float(p.pts * p.time_base), float((p.pts + p.duration) * p.time_base))
                     for p in c.demux(c.streams.audio[0]) if p.size and p.pts is not None]
            facts["audio_seconds"] = max(e for _, e in spans) - max(0.0, min(s for s, _ in spans))
    return facts


_ASS_HEADER = ("[Script Info]\r\nScriptType: v4.00+\r\nPlayResX: 384\r\nPlayResY: 288\r\n\r\n[V4+ Styles]\r\n"
               "Format: Name, Fontname, Fontsize, PrimaryColour, SecondaryColour, OutlineColour, BackColour, Bold, "
               "Italic, Underline, StrikeOut, ScaleX, ScaleY, Spacing, Angle, BorderStyle, Outline, Shadow, Alignment, "
               "MarginL, MarginR, MarginV, Encoding\r\nStyle: Default,Arial,16,&Hffffff,&Hffffff,&H0,&H0,0,0,0,0,100,"
               "100,0,0,1,1,0,2,10,10,10,1\r\n\r\n[Events]\r\nFormat: Layer, Start, End, Style, Name, MarginL, "
               "MarginR, MarginV, Effect, Text\r\n").encode()


def add_subtitles(src, dst, tmp_dir, codec: str = "mov_text", language: str = "eng") -> None:
    """Copy ``src`` to ``dst`` with one more stream: two subtitle lines, encoded as ``codec`` (via an SRT file)."""
    srt_path = Path(tmp_dir) / "lines.srt"
    srt_path.write_text("1\n00:00:00,000 --> 00:00:00,200\nfirst line\n\n2\n00:00:00,250 --> 00:00:00,450\n"
                        "second line\n")
    with av.open(str(src)) as inp, av.open(str(srt_path)) as srt, av.open(str(dst), "w") as out:
        routes = {s.index: out.add_stream_from_template(s) for s in inp.streams}
        text = srt.streams.subtitles[0]
        o = out.add_stream(codec)
        o.codec_context.subtitle_header = _ASS_HEADER
        o.codec_context.time_base = Fraction(1, 1000)
        o.metadata["language"] = language
        for p in inp.demux():
            if p.size:
                p.stream = routes[p.stream.index]
                out.mux(p)
        for p in srt.demux(text):
            if not p.size:
                continue
            q = o.codec_context.encode_subtitle(text.codec_context.decode2(p))
            q.stream, q.time_base = o, Fraction(1, 1000)
            q.pts = q.dts = int(p.pts * p.time_base * 1000)
            q.duration = int(p.duration * p.time_base * 1000)
            out.mux(q)
