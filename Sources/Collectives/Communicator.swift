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
    private let settings: GroupSettings
    private let recorder: FlightRecorder
    /// CURVE (tcp, transport_security = "curve"): this rank's keys and the ZAP handler of its context.
    private let keys: JobKeys?
    private let authenticator: Authenticator?
    /// The simulated network every group's messages obey (nil: the topology has none).
    private let shaper: LinkShaper?

    /// torchtitan's comm.trace_buf_size default.
    public static let defaultTraceBufferSize = 20_000
    /// Collectives the flight recorder keeps (0: it records nothing).
    public var traceBufferSize: Int { recorder.capacity }

    /// Everything this rank's groups have sent and received so far (subtract two snapshots for a window).
    public var traffic: Traffic { trafficCounter.snapshot }

    /// The last `traceBufferSize` collectives of every group of this rank, and where each group stands.
    public var flightRecord: FlightRecord { recorder.snapshot(worldSize: worldSize, jobID: spec.jobID) }

    /// The deadline of every collective that begins from now on, in every group: `spec.timeoutSeconds` until
    /// `setTimeout` changes it (torchtitan: a long comm.init_timeout_seconds until the first step completed, then
    /// comm.timeout_seconds).
    public var timeoutSeconds: Double { settings.timeoutSeconds }

    /// Changes `timeoutSeconds` from any thread; collectives already running keep the deadline they began with.
    public func setTimeout(seconds: Double) throws {
        guard seconds > 0, seconds.isFinite else {
            throw CollectiveError.invalidArgument(nil, "rank \(rank): a collective timeout must be a positive number of seconds, got \(seconds)")
        }
        settings.timeoutSeconds = seconds
    }

    /// The algorithm family of the collectives every group of this rank submits from now on (`auto` until
    /// `setAlgorithm`): every member of a group must have set the same before it submits the same collective.
    public var algorithm: CollectiveAlgorithm { settings.algorithm }

    public func setAlgorithm(_ algorithm: CollectiveAlgorithm) { settings.algorithm = algorithm }

    /// How long every collective of this rank waits on its group's worker before it starts (0: none): makes this
    /// rank a straggler, for fault-tolerance tests.
    public var stragglerDelaySeconds: Double { settings.delaySeconds }

    public func setStragglerDelay(seconds: Double) throws {
        guard seconds >= 0, seconds.isFinite else {
            throw CollectiveError.invalidArgument(nil, "rank \(rank): a straggler delay must be >= 0 seconds, got \(seconds)")
        }
        settings.delaySeconds = seconds
    }

    /// `context`: pass one shared context to run several ranks as threads of one process (inproc).
    /// `traceBufferSize`: collectives the flight recorder keeps (0: none).
    /// `securityLog`: where a CURVE rank reports refused connections (one line per peer address a minute at most);
    /// this layer prints nothing of its own.
    public init(spec: ClusterSpec, rank: Int, context: ZMQContext? = nil,
                traceBufferSize: Int = Communicator.defaultTraceBufferSize,
                securityLog: (@Sendable (String) -> Void)? = nil) throws {
        guard (0..<spec.worldSize).contains(rank) else {
            throw CollectiveError.invalidArgument(nil, "rank \(rank) is outside the world of \(spec.worldSize)")
        }
        if spec.transport == .tcp, spec.hostOfRank.count != spec.worldSize || spec.portOfRank.count != spec.worldSize {
            throw CollectiveError.invalidArgument(nil, "tcp needs a host and a port for each of the \(spec.worldSize) ranks")
        }
        self.spec = spec
        self.rank = rank
        let context = context ?? ZMQContext()
        self.context = context
        settings = GroupSettings(timeoutSeconds: spec.timeoutSeconds)
        recorder = FlightRecorder(rank: rank, capacity: traceBufferSize)
        if spec.usesCurve && spec.worldSize > 1 {
            guard CurveSupport.isAvailable else { throw CollectiveError.invalidArgument(nil, "rank \(rank): \(CurveSupport.unavailableMessage)") }
            guard let secret = spec.jobSecret else {
                throw CollectiveError.invalidArgument(nil, "rank \(rank): tcp with transport_security = \"curve\" needs the job's "
                    + "secret: start the ranks with `titan launch` (it hands them one), or give every rank the same "
                    + "--job-secret-file PATH (or set transport_security = \"none\" on a trusted network)")
            }
            let keys = secret.keys(jobID: spec.jobID, worldSize: spec.worldSize, rank: rank)
            self.keys = keys
            do {
                authenticator = try Authenticator(context: context, allowedKeys: keys.publicKeys, rank: rank,
                                                  log: securityLog ?? { _ in })
            } catch {
                throw CollectiveError.transport(nil, "rank \(rank) could not start its ZAP handler: \(error)")
            }
        } else {
            keys = nil
            authenticator = nil
        }
        if let network = spec.network, spec.worldSize > 1, spec.transport != .inproc {
            do { shaper = try LinkShaper(spec: spec, network: network) } catch { authenticator?.stop(); throw error }
        } else {
            shaper = nil
        }
        do {
            world = try newGroup(ranks: Array(0..<spec.worldSize))
        } catch {
            authenticator?.stop()
            throw error
        }
    }

    deinit { authenticator?.stop() }

    /// Connections this rank's CURVE sockets refused so far (0 without CURVE).
    public var refusedConnections: Int { authenticator?.refusals.count ?? 0 }

    /// Creates a group of `ranks` (every rank of the job must call this, members or not);
    /// returns nil on non-members.
    public func newGroup(ranks: [Int]) throws -> ProcessGroup? {
        try makeGroup(partition: [ranks])
    }

    /// A group whose sockets use `transportSecurity` instead of the job's: the benchmark measures CURVE's cost on a
    /// plaintext group of a CURVE job (`.none`: anyone who reaches its ports can send to it; use it for nothing else).
    /// `.curve` needs the job's secret.
    public func newGroup(ranks: [Int], transportSecurity: TransportSecurity) throws -> ProcessGroup? {
        if transportSecurity == .curve && spec.transport == .tcp && keys == nil {
            throw CollectiveError.invalidArgument(nil, "rank \(rank): a CURVE group needs the job's secret and transport_security = \"curve\"")
        }
        return try makeGroup(partition: [ranks], curve: transportSecurity == .curve)
    }

    /// Splits the world into disjoint groups (e.g. the rows of a device mesh) in one collective call;
    /// returns the group that holds this rank. Every rank must call it with the same partition.
    public func splitGroups(_ partition: [[Int]]) throws -> ProcessGroup {
        guard let g = try makeGroup(partition: partition) else {
            throw CollectiveError.invalidArgument(nil, "rank \(rank) is in no part of \(partition)")
        }
        return g
    }

    private func makeGroup(partition: [[Int]], curve: Bool? = nil) throws -> ProcessGroup? {
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
        var security: ChannelSecurity?
        if let keys, let authenticator, curve ?? true { security = ChannelSecurity(keys: keys, authenticator: authenticator) }
        let g = ProcessGroup(spec: spec, context: context, members: members, rank: members.firstIndex(of: rank)!, slot: slot,
                             traffic: trafficCounter, settings: settings, recorder: recorder, security: security,
                             shaper: shaper)
        groups.append(g)
        recorder.addGroup(slot: slot, members: members)
        return g
    }

    /// Closes every group (queued collectives finish first; queued sends are delivered within the
    /// linger time). Call before the process exits.
    public func shutdown() {
        for g in groups.reversed() { g.close() }
        groups.removeAll()
        world = nil
        authenticator?.stop()
    }
}

/// What every group of a communicator reads for each collective (the timeout and delay when it begins, on the worker
/// thread; the algorithm when it is submitted, on the caller's); any thread may change it.
final class GroupSettings: @unchecked Sendable {
    private let lock = NSLock()
    private var timeout: Double
    private var delay = 0.0
    private var chosen = CollectiveAlgorithm.auto

    init(timeoutSeconds: Double) { timeout = timeoutSeconds }

    var timeoutSeconds: Double {
        get { lock.lock(); defer { lock.unlock() }; return timeout }
        set { lock.lock(); timeout = newValue; lock.unlock() }
    }

    var algorithm: CollectiveAlgorithm {
        get { lock.lock(); defer { lock.unlock() }; return chosen }
        set { lock.lock(); chosen = newValue; lock.unlock() }
    }

    var delaySeconds: Double {
        get { lock.lock(); defer { lock.unlock() }; return delay }
        set { lock.lock(); delay = newValue; lock.unlock() }
    }
}
