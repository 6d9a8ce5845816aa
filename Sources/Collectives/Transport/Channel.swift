/// What a collective algorithm needs from the network: messages between the members of one process group, delivered
/// in order per sender, each with a deadline. ZeroMQ (`ZMQChannel`) is one implementation; tests drive the algorithms
/// over an in-memory one. Used by one thread at a time (the group's worker).
protocol Channel: AnyObject {
    associatedtype Message: ChannelMessage
    /// Members of the group, and this member's index among them.
    var size: Int { get }
    var me: Int { get }
    /// Sends `count` bytes at `bytes` to member `peer` without copying: the bytes must stay untouched until
    /// `waitForSends()` returns.
    func send(to peer: Int, bytes: UnsafeRawPointer, count: Int) throws
    /// Sends a message this member received or filled (ownership passes to the channel).
    func send(to peer: Int, payload: Message) throws
    /// A message of `bytes` bytes owned by the channel, to fill and send.
    func newMessage(bytes: Int) throws -> Message
    /// The next message of the current collective from member `peer`, which must hold `expectedBytes`.
    func receive(from peer: Int, expectedBytes: Int) throws -> Message
    /// Returns once the channel no longer reads any bytes lent by `send(to:bytes:count:)`.
    func waitForSends() throws
}

/// A message's payload: `count` bytes at `bytes`.
protocol ChannelMessage {
    var count: Int { get }
    var bytes: UnsafeMutableRawPointer { get }
    /// A second handle on the same payload, to forward it without copying.
    func share() throws -> Self
}
