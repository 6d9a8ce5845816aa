// Fault injection for rehearsing failures on the simulated cluster (the [fault] section): a rank (or every rank of a
// host) is killed, hangs or turns into a straggler at a given step. Applied on a job's first attempt only, so that a
// restart (--max-restarts) can succeed.

import Collectives
import Config
import Foundation
#if canImport(Glibc)
import Glibc
#endif

public enum FaultMode: String, ConfigEnum, Equatable {
    /// The rank exits abruptly (SIGKILL).
    case kill
    /// The rank stops making progress but stays alive (its peers' collective timeouts find it).
    case hang
    /// Every collective of the rank waits `delay_ms` first (a straggler).
    case slow
}

/// [fault]
public struct FaultConfig: ConfigSection {
    /// The rank to hit; -1: none (or the ranks of `node`).
    public var rank = -1
    /// Every rank of this host (its index in the topology); -1: none.
    public var node = -1
    /// The step at whose start the fault happens (1-based); 0: never.
    public var at_step = 0
    public var mode = FaultMode.kill
    public var delay_ms = 100.0
    public init() {}

    public static let doc = "fault injection (the first attempt only)"
    public static let fields: [ConfigField<FaultConfig>] = [
        ConfigField("rank", \.rank, "rank to hit (-1: none)"),
        ConfigField("node", \.node, "hit every rank of this host (-1: none)"),
        ConfigField("at_step", \.at_step, "step at whose start the fault happens (0: never)"),
        ConfigField("mode", \.mode, "kill: exit abruptly; hang: stop progressing; slow: delay every collective by delay_ms"),
        ConfigField("delay_ms", \.delay_ms, "delay of each collective with mode slow"),
    ]

    public func validate() throws {
        if at_step < 0 { throw ConfigError.invalid(key: "at_step", reason: "must be >= 0") }
        if at_step > 0 && rank < 0 && node < 0 { throw ConfigError.invalid(key: "rank", reason: "at_step is set: give the rank (or node) to hit") }
        if delay_ms < 0 { throw ConfigError.invalid(key: "delay_ms", reason: "must be >= 0") }
    }

    /// Whether this rank is hit: on the first attempt, when it is `rank` or runs on `node`.
    func targets(rank r: Int, node n: Int, attempt: Int) -> Bool {
        attempt == 0 && at_step > 0 && (rank == r || node == n)
    }

    /// Applies the fault when step `step` starts on a targeted rank.
    func apply(atStep step: Int, comm: Communicator, log: (String) -> Void) throws {
        guard step == at_step else { return }
        switch mode {
        case .kill:
            log("fault: killing this rank at step \(step)")
            kill(getpid(), SIGKILL)
        case .hang:
            log("fault: this rank hangs at step \(step)")
            while true { sleep(3600) }
        case .slow:
            log("fault: every collective of this rank waits \(delay_ms) ms from step \(step)")
            try comm.setStragglerDelay(seconds: delay_ms / 1000)
        }
    }
}
