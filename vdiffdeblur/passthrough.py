"""Everything in a source file that is not the picture (audio, subtitles), carried into the output as it is written.

Each stream the output container takes is copied packet for packet; audio it does not take is re-encoded (AAC where
the container has it) with a one-line note; a subtitle stream it does not take is left out with a note. Packets keep
their timestamps, so the output's audio sits where the input's did against the same frames.
"""

from __future__ import annotations

import io
import logging

logger = logging.getLogger(__name__)

_KEPT_METADATA = ("language", "title", "handler_name")
_LAYOUTS = {1: "mono", 2: "stereo", 6: "5.1", 8: "7.1"}  # the encoders want a named layout, not "2 channels"
_OPUS_RATES = {8000, 12000, 16000, 24000, 48000}
_TS_CODECS = {"audio": {"aac", "aac_latm", "mp2", "mp3", "ac3", "eac3", "opus", "dts", "truehd"},
              "subtitle": {"dvb_subtitle", "dvb_teletext"}}
_AAC_FORMATS = {"mp4", "mov", "ipod", "matroska", "mpegts", "flv", "avi", "asf"}


class StreamCopier:
    """Audio and subtitle streams of ``source`` added to ``out`` (an open PyAV output container, before its header
    is written) and muxed in time order next to the video: call :meth:`mux_until` before each video packet and
    :meth:`finish` after the last one."""

    def __init__(self, source, out, out_name: str):
        import av

        self.inp = av.open(str(source))
        self.out = out
        self.routes = {}  # input stream index -> (output stream, resampler feeding its encoder, or None: copied)
        self.notes: list[str] = []
        fmt = out.format.name.split(",")[0]
        for s in self.inp.streams:
            if s.type not in ("audio", "subtitle"):
                continue
            name = s.codec_context.name
            if _playable_in(fmt, s.type, name) and _muxer_takes(fmt, source, s.index):
                o = out.add_stream_from_template(s)
                self.routes[s.index] = (o, None)
            elif s.type == "audio":
                codec = "aac" if fmt in _AAC_FORMATS else out.default_audio_codec
                rate = s.codec_context.sample_rate
                if "opus" in codec and rate not in _OPUS_RATES:
                    rate = 48000  # Opus encodes these rates only; the resampler converts
                layout = _LAYOUTS.get(s.codec_context.channels, s.codec_context.layout.name)
                o = out.add_stream(codec, rate=rate)
                o.layout = layout
                self.routes[s.index] = (o, av.AudioResampler(format=o.codec_context.format, layout=layout, rate=rate))
                self.notes.append(f"{out_name}: audio stream {s.index} ({name}) cannot be copied into this "
                                  f"container; re-encoded as {codec}")
            else:
                self.notes.append(f"{out_name}: subtitle stream {s.index} ({name}) cannot go into this container; "
                                  "not kept")
                continue
            for key in _KEPT_METADATA:
                if key in s.metadata:
                    o.metadata[key] = s.metadata[key]
            try:
                o.disposition = s.disposition  # which track plays by default, forced subtitles, ...
            except (AttributeError, TypeError, ValueError):
                pass
        for note in self.notes:
            logger.warning(note)
        wanted = [s for s in self.inp.streams if s.index in self.routes]
        self._packets = self.inp.demux(*wanted) if wanted else iter(())
        self._pending = None

    @staticmethod
    def _time(packet) -> float:
        ts = packet.dts if packet.dts is not None else packet.pts
        return float(ts * packet.time_base) if ts is not None else float("-inf")

    def _emit(self, packet) -> None:
        o, resampler = self.routes[packet.stream.index]
        if resampler is None:
            if packet.size == 0:  # the demuxer's end-of-stream marker
                return
            packet.stream = o
            self.out.mux(packet)
            return
        for frame in packet.stream.codec_context.decode(packet if packet.size else None):
            for piece in resampler.resample(frame):
                self.out.mux(o.encode(piece))

    def mux_until(self, seconds: float) -> None:
        """Mux every packet that starts before ``seconds``."""
        while True:
            packet = self._pending
            if packet is None:
                packet = next(self._packets, None)
                if packet is None:
                    return
            if packet.size and self._time(packet) > seconds:
                self._pending = packet
                return
            self._pending = None
            self._emit(packet)

    def finish(self) -> None:
        """Mux what is left (audio that outlasts the video included) and flush the re-encoders."""
        self.mux_until(float("inf"))
        for o, resampler in self.routes.values():
            if resampler is not None:
                for piece in resampler.resample(None):
                    self.out.mux(o.encode(piece))
                self.out.mux(o.encode(None))
        self.close()

    def close(self) -> None:
        if self.inp is not None:
            self.inp.close()
            self.inp = None


def _playable_in(fmt: str, kind: str, codec: str) -> bool:
    """False where a muxer takes a stream that players then cannot use (MPEG-TS stores unknown codecs as opaque
    data; MP4 stores PCM as ipcm, which few players read)."""
    if fmt == "mpegts":
        return codec in _TS_CODECS.get(kind, ())
    if fmt in ("mp4", "ipod") and codec.startswith("pcm_"):
        return False
    return True


def _muxer_takes(fmt: str, source, index: int, packets: int = 3) -> bool:
    """Whether FFmpeg's ``fmt`` muxer takes stream ``index`` of ``source`` as it is: a trial in memory (header, a
    few packets, trailer), since the muxers' own codec queries are incomplete (MPEG-TS) or too kind (PCM in MP4)."""
    import av

    with av.open(str(source)) as inp, av.logging.Capture():
        s = inp.streams[index]
        try:
            with av.open(io.BytesIO(), "w", format=fmt) as trial:
                o = trial.add_stream_from_template(s)
                n = 0
                for p in inp.demux(s):
                    if p.size:
                        p.stream = o
                        trial.mux(p)
                        n += 1
                    if n >= packets:
                        break
        except (av.FFmpegError, ValueError, NotImplementedError):
            return False
    return True
