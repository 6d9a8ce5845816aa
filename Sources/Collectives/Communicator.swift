import Foundation

/// One rank's entry point to the collectives: it owns the ZeroMQ context and creates process groups.
///
/// Groups are created collectively, like torch.distributed.new_group: every rank of the job makes the
/// same sequence of `newGroup`/`splitGroups` calls, so a group gets the same slot (and endpoints) on
/// all its members. World size 1 opens no socket at all.
public final class Communicator: @unchecked Sendable {
    public let spec: ClusterSpec
    public let rank: Int
    public var worldSize: Int { spec.worldSize }
    public private(set) var world: ProcessGroup!
    private let context: ZMQContext
    private var groups: [ProcessGroup] = []
    private var nextSlot = 0
    private let trafficCounter = TrafficCounter()

    /// Everything this rank's groups have sent and received so far (subtract two snapshots for a window).
    public var traffic: Traffic { trafficCounter.snapshot }

    /// `context`: pass one shared context to run several ranks as threads of one process (inproc).
    public init(spec: ClusterSpec, rank: Int, context: ZMQContext? = nil) throws {
        guard (0..<spec.worldSize).contains(rank) else {
            throw CollectiveError.invalidArgument(nil, "rank \(rank) is outside the world of \(spec.worldSize)")
        }
        if spec.transport == .tcp, spec.hostOfRank.count != spec.worldSize || spec.portOfRank.count != spec.worldSize {
            throw CollectiveError.invalidArgument(nil, "tcp needs a host and a port for each of the \(spec.worldSize) ranks")
        }
        self.spec = spec
        self.rank = rank
        self.context = context ?? ZMQContext()
        world = try newGroup(ranks: Array(0..<spec.worldSize))
    }

    /// Creates a group of `ranks` (every rank of the job must call this, members or not);
    /// returns nil on non-members.
    public func newGroup(ranks: [Int]) throws -> ProcessGroup? {
        try makeGroup(partition: [ranks])
    }

    /// Splits the world into disjoint groups (e.g. the rows of a device mesh) in one collective call;
    /// returns the group that holds this rank. Every rank must call it with the same partition.
    public func splitGroups(_ partition: [[Int]]) throws -> ProcessGroup {
        guard let g = try makeGroup(partition: partition) else {
            throw CollectiveError.invalidArgument(nil, "rank \(rank) is in no part of \(partition)")
        }
        return g
    }

    private func makeGroup(partition: [[Int]]) throws -> ProcessGroup? {
        let all = partition.flatMap { $0 }
        guard Set(all).count == all.count, all.allSatisfy({ (0..<worldSize).contains($0) }) else {
            throw CollectiveError.invalidArgument(nil, "group partition \(partition) repeats a rank or names one outside 0..<\(worldSize)")
        }
        guard nextSlot < ClusterSpec.maxGroupsPerRank else {
            throw CollectiveError.invalidArgument(nil, "more than \(ClusterSpec.maxGroupsPerRank) process groups")
        }
        let slot = nextSlot
        nextSlot += 1
        guard let members = partition.first(where: { $0.contains(rank) }) else { return nil }
        let g = ProcessGroup(spec: spec, context: context, members: members, rank: members.firstIndex(of: rank)!, slot: slot,
                             traffic: trafficCounter)
        groups.append(g)
        return g
    }

    /// Closes every group (queued collectives finish first; queued sends are delivered within the
    /// linger time). Call before the process exits.
    public func shutdown() {
        for g in groups.reversed() { g.close() }
        groups.removeAll()
        world = nil
    }
}
