#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora (fuzz/corpus/<target>/) that are made rather
than captured: Room API frames as the Flashphoner SDK sends them, STUN requests signed
with the fuzz target's peer passwords, RTMP chunk streams, FLV tag bodies, tokens,
configuration files (the default configuration and the board profiles), H.264 from
ffmpeg. The SDP offers in fuzz/corpus/sdp_offer/chromium-*.sdp were captured from
Debian's Chromium (createOffer with a fake camera: publish, play, simulcast).

Deterministic: running it again writes the same files. Usage: scripts/fuzz-seeds.py
(from the repository; needs target/debug/huddle or HUDDLE_BIN for the configuration
seeds, and ffmpeg for the H.264 ones)."""

import base64
import hashlib
import hmac
import json
import os
import struct
import subprocess
import sys
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def frame(message, *data):
    return json.dumps({"message": message, "data": list(data)})


def room_api():
    frames = {
        "connection": frame("connection", {
            "appKey": "roomApp", "mediaProviders": ["WebRTC"], "clientVersion": "2.0",
            "clientOSVersion": "5.0 (X11)", "clientBrowserVersion": "Mozilla/5.0",
            "login": "alice", "custom": {"token": ""}}),
        "join": frame("sendData", {"operationId": "op-1", "payload": {"roomName": "standup"},
                                   "name": "join"}) ,
        "join-room": frame("joinRoom", {"name": "standup", "operationId": "op-2"}),
        "publish": frame("publishStream", {
            "mediaSessionId": "m-1", "name": "standup-alice", "published": True,
            "hasVideo": True, "hasAudio": True, "status": "NEW", "sdp": "v=0\r\n",
            "custom": {"name": "standup"}}),
        "play": frame("playStream", {"mediaSessionId": "m-2", "name": "standup-bob",
                                     "sdp": "v=0\r\n", "status": "NEW"}),
        "message": frame("sendMessage", {"to": "bob", "body": "héllo <b>&</b> 👋",
                                         "id": "1"}),
        "set-layer": frame("sendData", {"operationId": "op-3", "name": "setLayer",
                                        "payload": {"stream": "standup-bob", "layer": "low"}}),
        "mute": frame("muteStream", {"mediaSessionId": "m-1", "audio": True}),
        "unpublish": frame("unPublishStream", {"mediaSessionId": "m-1"}),
        "leave": frame("leaveRoom", {"name": "standup", "operationId": "op-4"}),
        "ping": '{"message":"ping","data":[null]}',
        "pong": '{"message":"pong","data":[]}',
        "unknown": frame("noSuchMessage", {"x": 1}),
        "ignored": frame("pushLogs", {"logs": "..."}),
        "malformed": '{"message": "connection", "data": [',
        "surrogate": '{"message":"sendMessage","data":[{"to":"bob","body":"\\ud83d"}]}',
        "not-object": "[1, 2, 3]",
    }
    for name, text in frames.items():
        write("room_api_frame", name + ".json", text)


def stun_request(username, pwd, fingerprint=True):
    attrs = b""
    u = username.encode()
    attrs += struct.pack(">HH", 0x0006, len(u)) + u + b"\0" * (-len(u) % 4)
    attrs += struct.pack(">HHI", 0x0024, 4, 0x6E0001FF)  # PRIORITY
    head = lambda length: struct.pack(">HHI", 0x0001, length, 0x2112A442) + bytes(range(12))
    # MESSAGE-INTEGRITY over the header (its length counting the attribute) and what precedes.
    with_mi = len(attrs) + 24
    mac = hmac.new(pwd.encode(), head(with_mi) + attrs, hashlib.sha1).digest()
    attrs += struct.pack(">HH", 0x0008, 20) + mac
    if fingerprint:
        msg = head(len(attrs) + 8) + attrs
        crc = (zlib.crc32(msg) ^ 0x5354554E) & 0xFFFFFFFF
        attrs += struct.pack(">HHI", 0x8028, 4, crc)
    return head(len(attrs)) + attrs


def datagrams(*items):
    out = b""
    for addr, d in items:
        assert len(d) < 256
        out += bytes([len(d), addr]) + d
    return out


def stun():
    good = stun_request("abcd:remote", "pwd-of-abcd-0123456789")
    other = stun_request("wxyz:r", "x", fingerprint=False)
    wrong = stun_request("abcd:remote", "not-the-password")
    rtp = bytes([0x80, 0x60, 0, 1, 0, 0, 0, 1, 0x12, 0x34, 0x56, 0x78]) + b"\xaa" * 100
    dtls = bytes([22, 0xFE, 0xFD]) + b"\0" * 10 + b"\x01" * 40
    write("stun_demux", "verified-then-rtp", datagrams((1, good), (1, rtp), (2, rtp)))
    write("stun_demux", "two-peers", datagrams((1, good), (3, other), (3, dtls), (1, rtp)))
    write("stun_demux", "wrong-password", datagrams((4, wrong), (4, rtp)))
    write("stun_demux", "junk", datagrams((5, b"\0\1\0\0\x21\x12\xa4\x42" + b"\0" * 12), (5, b"")))


def amf0_string(s):
    b = s.encode()
    return b"\x02" + struct.pack(">H", len(b)) + b


def amf0_number(n):
    return b"\x00" + struct.pack(">d", n)


def chunk(csid, msg_type, stream, payload, chunk_size=128, timestamp=0):
    out = bytes([csid]) + struct.pack(">I", timestamp)[1:] + struct.pack(">I", len(payload))[1:]
    out += bytes([msg_type]) + struct.pack("<I", stream)
    first = True
    for i in range(0, max(len(payload), 1), chunk_size):
        if not first:
            out += bytes([0xC0 | csid])
        out += payload[i:i + chunk_size]
        first = False
    return out


def rtmp():
    connect = amf0_string("connect") + amf0_number(1) + b"\x03" + amf0_string("app")[1:] + \
        amf0_string("live") + b"\0\0\x09"
    set_chunk = chunk(2, 1, 0, struct.pack(">I", 4096))
    write("rtmp_chunks", "connect", chunk(3, 20, 0, connect))
    video = b"\x17\x01\0\0\0" + struct.pack(">I", 300) + b"\x65" + b"\x88" * 299
    write("rtmp_chunks", "set-chunk-size-then-video",
          set_chunk + chunk(6, 9, 1, video, chunk_size=4096, timestamp=40))
    write("rtmp_chunks", "video-in-128-byte-chunks", chunk(6, 9, 1, video, timestamp=33))
    audio = b"\xaf\x01" + b"\x21" * 200
    write("rtmp_chunks", "audio", chunk(4, 8, 1, audio, timestamp=23))


def flv():
    sps = bytes.fromhex("6742c01e95a0501ec8")
    pps = bytes.fromhex("68ce3c80")
    record = bytes([1, sps[1], sps[2], sps[3], 0xFF, 0xE1]) + struct.pack(">H", len(sps)) + sps
    record += bytes([1]) + struct.pack(">H", len(pps)) + pps
    write("flv_tags", "avc-sequence-header", b"\x17\x00\0\0\0" + record)
    write("flv_tags", "avc-config", record)
    nalus = struct.pack(">I", 5) + b"\x65\x88\x84\x00\x33" + struct.pack(">I", 3) + b"\x06\x05\x01"
    write("flv_tags", "avc-nalus", b"\x17\x01\0\0\x21" + nalus)
    write("flv_tags", "aac-config", b"\xaf\x00\x12\x10")
    write("flv_tags", "aac-raw", b"\xaf\x01" + b"\x21\x00" * 20)
    write("flv_tags", "split-sps-pps", bytes([len(sps)]) + sps[1:] + pps)


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt():
    def token(claims, secret):
        head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        body = b64(json.dumps(claims).encode())
        sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
        return f"{head}.{body}.{b64(sig)}"
    claims = {"sub": "alice", "rooms": ["standup"], "publish": True, "exp": 4102444800}
    write("jwt", "other-secret", "alice\n" + token(claims, "another-secret"))
    write("jwt", "alg-none", "alice\n" + b64(b'{"alg":"none"}') + "." +
          b64(json.dumps(claims).encode()) + ".")
    write("jwt", "rooms-list", "bob\nstandup,daily,lobby")
    write("jwt", "garbage", "alice\n....")


def config():
    huddle = os.environ.get("HUDDLE_BIN", os.path.join(ROOT, "target", "debug", "huddle"))
    default = subprocess.run([huddle, "--print-default-config"], check=True,
                             capture_output=True).stdout
    write("config", "default.toml", default)
    boards = os.path.join(ROOT, "board")
    for b in sorted(os.listdir(boards)):
        p = os.path.join(boards, b, "profile.toml")
        if os.path.exists(p):
            write("config", f"board-{b}.toml", open(p, "rb").read())
    write("config", "small.toml", '[http]\nlisten = "127.0.0.1:8080"\n[media]\nworkers = 2\n'
          'advertise_ips = ["127.0.0.1"]\n[auth]\nmode = "token"\nsecret = "s"\n')


def h264():
    out = subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=10",
         "-frames:v", "3", "-pix_fmt", "yuv420p", "-c:v", "libx264", "-profile:v", "baseline",
         "-g", "2",
         "-x264-params", "threads=1", "-bsf:v", "h264_mp4toannexb", "-f", "h264", "-"],
        check=True, capture_output=True).stdout
    write("h264", "testsrc-3-frames.h264", out)
    # The first access unit alone: up to the second slice's start code.
    idr = out.find(b"\x00\x00\x01\x65")
    nxt = out.find(b"\x00\x00\x00\x01", idr + 4)
    write("h264", "testsrc-idr.h264", out[:nxt if nxt > 0 else len(out)])
    write("h264", "empty-units", b"\x00\x00\x01\x00\x00\x01\x67\x00\x00\x01")


def room_core():
    # (op, arg) steps, see huddle::fuzz::room_core: 0 connect, 1 join, 2 leave,
    # 3 publish, 4 play, 5 unpublish, 6 stop, 7 chat, 8 moderate, 9 vanish,
    # 10 time passes, 11 pong, 12 availableStream, 13 a raw frame.
    seqs = {
        "meeting": [0, 0, 0, 1, 1, 0, 1, 3, 3, 0, 4, 1, 7, 0, 7, 1, 10, 50, 11, 0, 2, 0, 2, 1],
        "vanish": [0, 0, 0, 1, 1, 3, 1, 3, 3, 3, 9, 0, 10, 255, 10, 255],
        "moderate": [0, 0, 0, 1, 0, 2, 1, 0, 1, 1, 1, 2, 8, 0, 8, 1, 6, 1, 5, 0],
        "full": [0, 0, 0, 1, 0, 2, 0, 3, 0, 4, 1, 0, 1, 1, 1, 2, 1, 3],
        "raw": [0, 0, 13, 24] + list(b'{"message":"joinRoom",}') + [1, 0],
    }
    for name, steps in seqs.items():
        write("room_core", name, bytes(steps))


def rtmp_urls():
    # The app and the stream key on two lines, or a whole push URL.
    write("rtmp_urls", "publisher", "daily\nalice")
    write("rtmp_urls", "token-on-key", "daily\nalice?token=eyJh.eyJz.sig&record=true")
    write("rtmp_urls", "token-on-app", "daily?token=abc\nalice")
    write("rtmp_urls", "percent-utf8", "%D0%BA%D0%BE%D0%BC%D0%BD%D0%B0%D1%82%D0%B0\n%E2%82%AC%20x")
    write("rtmp_urls", "bad-percent", "room%\n%00%2F")
    write("rtmp_urls", "push", "rtmp://a.rtmp.youtube.com/live2/xxxx-xxxx-xxxx")
    write("rtmp_urls", "push-port-query", "rtmp://127.0.0.1:1936/live/key?secret=1")
    write("rtmp_urls", "push-ipv6", "rtmp://[::1]:1935/app/nested/key")
    write("rtmp_urls", "push-rtmps", "rtmps://host/app/key")


def admin_api_body():
    # First byte: 0 mute, 1 push, 2 device; then the body.
    write("admin_api_body", "mute", b"\x00" + b'{"audio": true}')
    write("admin_api_body", "mute-empty", b"\x00{}")
    write("admin_api_body", "mute-unknown-field", b"\x00" + b'{"audio": true, "x": 1}')
    write("admin_api_body", "push", b"\x01" + b'{"stream": "daily-alice", "url": "rtmp://127.0.0.1/live/key", "retry_ms": 500}')
    write("admin_api_body", "push-bad-url", b"\x01" + b'{"stream": "s", "url": "http://x/y"}')
    write("admin_api_body", "push-wrong-type", b"\x01" + b'{"stream": 7, "url": []}')
    write("admin_api_body", "device", b"\x02" + b'{"camera": false, "microphone": true}')
    write("admin_api_body", "not-json", b"\x02{\"camera\": fal")


def rtp_packet(flags, ts_step, payload):
    # huddle::fuzz::rtp_depacketizers: flags (bit 0 marker, bits 1-3 sequence step + 2),
    # a timestamp step (x100), a length byte, the payload.
    return bytes([flags, ts_step, len(payload)]) + payload


def rtp_depacketizers():
    step = 3 << 1  # the next sequence number
    sps = bytes([0x67, 0x42, 0xE0, 0x1F, 0xDA, 0x02, 0x80, 0xBF, 0xE5, 0x84, 0x00])
    pps = bytes([0x68, 0xCE, 0x3C, 0x80])
    stap = bytes([0x78, 0, len(sps)]) + sps + bytes([0, len(pps)]) + pps
    idr = [bytes([0x7C, 0x85]) + b"\x11" * 60, bytes([0x7C, 0x05]) + b"\x22" * 60,
           bytes([0x7C, 0x45]) + b"\x33" * 30]
    delta = bytes([0x41]) + b"\x44" * 40
    key = rtp_packet(step, 30, stap) + b"".join(
        rtp_packet(step | (1 if i == 2 else 0), 0, p) for i, p in enumerate(idr))
    write("rtp_depacketizers", "h264-key-then-delta",
          key + rtp_packet(step | 1, 30, delta) + rtp_packet(step | 1, 30, delta))
    # A lost fragment (sequence step 2), then a delta: dropped until the next key frame.
    lossy = rtp_packet(step, 30, stap) + rtp_packet(step, 0, idr[0]) + \
        rtp_packet(4 << 1, 0, idr[2]) + rtp_packet(step | 1, 30, delta) + key
    write("rtp_depacketizers", "h264-loss", lossy)
    # Reordered and duplicated packets (steps of -1 and 0).
    write("rtp_depacketizers", "h264-reorder",
          rtp_packet(step, 30, stap) + rtp_packet(4 << 1, 0, idr[1]) + rtp_packet(1 << 1, 0, idr[0])
          + rtp_packet((3 << 1) | 1, 0, idr[2]) + rtp_packet(2 << 1, 0, idr[2]))
    # VP8 (RFC 7741): S bit descriptor, a key frame (bit 0 of the first byte clear).
    vp8_key = bytes([0x10, 0x50, 0x42, 0x00, 0x9D, 0x01, 0x2A, 0x40, 0x00, 0x30, 0x00]) + b"\x55" * 50
    vp8_delta = bytes([0x10, 0x31]) + b"\x66" * 40
    write("rtp_depacketizers", "vp8-key-delta",
          rtp_packet(step | 1, 30, vp8_key) + rtp_packet(step | 1, 30, vp8_delta)
          + rtp_packet(step, 30, bytes([0x10]) + vp8_delta[1:20]) + rtp_packet(step | 1, 0, bytes([0x00]) + vp8_delta[20:]))


def main():
    rtmp_urls()
    admin_api_body()
    rtp_depacketizers()
    room_core()
    room_api()
    stun()
    rtmp()
    flv()
    jwt()
    config()
    h264()
    print("seeds written under", CORPUS, file=sys.stderr)


if __name__ == "__main__":
    main()
