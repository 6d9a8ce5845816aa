import Foundation

/// All-to-all-v by pairwise exchange: at step k a rank sends to (r+k) mod n and receives from
/// (r-k) mod n, so no rank is hammered by everyone at once. Sends are zero-copy and posted up front;
/// receives are taken in step order. Every pair exchanges a message even when its split is empty.
func pairwiseAllToAll(_ ch: GroupChannel, send: UnsafeRawPointer, sendLayout: ChunkLayout,
                      receive: UnsafeMutableRawPointer, receiveLayout: ChunkLayout, elementSize: Int) throws {
    let n = ch.size, r = ch.me
    if sendLayout.sizes[r] > 0 {
        memcpy(receive + receiveLayout.offsets[r], send + sendLayout.offsets[r], sendLayout.sizes[r])
    }
    // Step k's send is posted one step ahead of step k's receive: links stay busy, but no rank
    // has more than two exchanges in flight, which keeps every ZeroMQ pipe streaming.
    func post(_ k: Int) throws {
        let peer = (r + k) % n
        for seg in Segments.of(sendLayout.sizes[peer], elementSize: elementSize) {
            try ch.send(to: peer, bytes: send + sendLayout.offsets[peer] + seg.lowerBound, count: seg.count)
        }
    }
    if n > 1 { try post(1) }
    for k in 1..<max(n, 1) {
        if k + 1 < n { try post(k + 1) }
        let peer = (r + n - k) % n
        for seg in Segments.of(receiveLayout.sizes[peer], elementSize: elementSize) {
            let m = try ch.receive(from: peer, expectedBytes: seg.count)
            if seg.count > 0 { memcpy(receive + receiveLayout.offsets[peer] + seg.lowerBound, m.bytes, seg.count) }
        }
    }
}
