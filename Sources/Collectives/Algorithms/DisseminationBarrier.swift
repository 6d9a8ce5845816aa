/// Dissemination barrier: in round k every rank signals (r + 2^k) mod n and waits for (r - 2^k) mod n;
/// after ceil(log2 n) rounds every rank has transitively heard from every other.
func disseminationBarrier<C: Channel>(_ ch: C) throws {
    let n = ch.size, r = ch.me
    var token: UInt8 = 0
    var distance = 1
    while distance < n {
        try withUnsafeBytes(of: &token) { try ch.send(to: (r + distance) % n, bytes: $0.baseAddress!, count: 0) }
        _ = try ch.receive(from: (r + n - distance) % n, expectedBytes: 0)
        distance *= 2
    }
}
