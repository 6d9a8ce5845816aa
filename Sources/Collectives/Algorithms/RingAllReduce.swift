/// All-reduce as ring reduce-scatter followed by ring all-gather, in place: 2(n-1)/n of the buffer
/// crosses each link, the bandwidth optimum. Each chunk is reduced once, by one rank, and then copied
/// everywhere, so every rank ends with bitwise the same result.
func ringAllReduce<C: Channel>(_ ch: C, buffer: UnsafeMutableRawPointer, count: Int, reduction: ByteReduction,
                   finish: (UnsafeMutableRawPointer, Int) -> Void) throws {
    let layout = ChunkLayout.even(count: count, parts: ch.size, elementSize: reduction.elementSize)
    let mine = buffer + layout.offsets[ch.me]
    try ringReduceScatter(ch, input: buffer, output: mine, layout: layout, reduction: reduction)
    finish(mine, layout.sizes[ch.me])
    // The reduce-scatter lent slices of `buffer` to ZeroMQ; the all-gather overwrites them.
    try ch.waitForSends()
    try ringAllGather(ch, output: buffer, layout: layout, elementSize: reduction.elementSize)
}
