import Foundation

/// Ring pass, the transport's ceiling for every ring collective (`titan bench` measures it next to them): each member
/// sends `count` bytes to the next member as one zero-copy message and takes one from the previous member, `repeats`
/// times, without copying or reducing what it receives (like ../shared/anchors/zmq_ring_ceiling.py, with this
/// transport's framing and checks).
func ringPass<C: Channel>(_ ch: C, bytes: UnsafeRawPointer, count: Int, repeats: Int) throws {
    let n = ch.size, r = ch.me
    guard n > 1 else { return }
    for _ in 0..<repeats {
        try ch.send(to: (r + 1) % n, bytes: bytes, count: count)
        _ = try ch.receive(from: (r + n - 1) % n, expectedBytes: count)
    }
}
