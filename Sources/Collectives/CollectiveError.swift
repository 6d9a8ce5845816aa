// Every failure names the rank that saw it, the collective, the group and what to do.

public struct CollectiveContextInfo: Sendable, CustomStringConvertible {
    public var rank: Int
    public var kind: CollectiveKind
    public var sequence: UInt64
    public var groupSlot: Int
    public var groupMembers: [Int]

    public var description: String {
        "rank \(rank), \(kind) #\(sequence) in group \(groupSlot) \(groupMembers)"
    }
}

public enum CollectiveError: Error, CustomStringConvertible, Sendable {
    /// Nothing arrived from `missingRanks` before the deadline.
    case timeout(CollectiveContextInfo, missingRanks: [Int], seconds: Double)
    /// A send could not be queued or delivered before the deadline (the peer is not reading);
    /// `peer` is nil when several sends were still in flight.
    case sendTimeout(CollectiveContextInfo, peer: Int?, seconds: Double)
    /// A frame whose header contradicts what this collective expects.
    case badFrame(CollectiveContextInfo, peer: Int?, reason: String)
    /// Arguments inconsistent with the group (sizes, counts, root, op).
    case invalidArgument(CollectiveContextInfo?, String)
    /// The group was shut down (or a previous collective on it failed).
    case groupClosed(String)
    case transport(CollectiveContextInfo?, String)

    public var description: String {
        switch self {
        case let .timeout(c, missing, s):
            return "\(c.description): timed out after \(s)s waiting for rank(s) \(missing); they never sent their part (crashed, hung, or called a different collective). Raise --comm.timeout_seconds if they are just slow."
        case let .sendTimeout(c, peer, s):
            return "\(c.description): could not deliver to \(peer.map { "rank \($0)" } ?? "the group's peers") within \(s)s; they are not receiving."
        case let .badFrame(c, peer, reason):
            return "\(c.description): bad frame\(peer.map { " from rank \($0)" } ?? ""): \(reason)"
        case let .invalidArgument(c, reason):
            return "\(c.map { $0.description + ": " } ?? "")invalid argument: \(reason)"
        case let .groupClosed(reason):
            return "process group closed: \(reason)"
        case let .transport(c, reason):
            return "\(c.map { $0.description + ": " } ?? "")transport error: \(reason)"
        }
    }
}
