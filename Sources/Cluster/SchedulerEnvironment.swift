// Ranks started by a cluster scheduler instead of our launcher: `srun titan train`, `mpirun -np N titan train`, or a
// torchrun-style environment. Each scheduler's variables become the same RankIdentity, with a topology derived from
// them (no topology file): one host → ipc, several → tcp on the hosts' names. Every rank derives the same job id and
// topology without talking first, except where the scheduler does not say which host each rank is on (MPI and torchrun
// on several hosts): those ranks meet in a file store first (FileStore.swift).
//
// Which scheduler started this process, in this order (`SchedulerEnvironment.detect`; our launcher's variables, with
// their TITAN_*, come before all of them: `RankIdentity.fromEnvironment`):
//   Slurm     SLURM_PROCID, SLURM_STEP_NUM_TASKS | SLURM_NTASKS, SLURM_STEP_NODELIST | SLURM_JOB_NODELIST,
//             SLURM_STEP_TASKS_PER_NODE | SLURM_TASKS_PER_NODE, SLURM_LOCALID, SLURM_NODEID, SLURM_JOB_ID, SLURM_STEP_ID;
//             ranks block-wise over the nodes (srun's default distribution). Only in a task of a step (SLURM_STEP_ID
//             set): the batch script itself is not a rank. And not when another starter's rank or size (mpirun's,
//             torchrun's) disagrees with Slurm's: that starter ran inside the step and started this process.
//   Open MPI  OMPI_COMM_WORLD_RANK / SIZE / LOCAL_RANK / LOCAL_SIZE; job id OMPI_MCA_ess_base_jobid (Open MPI 4; 5:
//             PMIX_NAMESPACE).
//   PMI       PMI_RANK, PMI_SIZE; local rank and size from MPI_LOCALRANKID / MPI_LOCALNRANKS (MPICH's Hydra) or
//             PMI_LOCAL_RANK / PMI_LOCAL_SIZE; job id PMI_JOBID, I_MPI_HYDRA_UUID or PMIX_NAMESPACE (on one host: the
//             parent process, the launcher's proxy every local rank shares).
//   torchrun  RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT; job id a hash of
//             TORCHELASTIC_RUN_ID and MASTER_ADDR:MASTER_PORT.
// Ports (tcp): local rank l of every host listens on BASE + l × ClusterSpec.maxGroupsPerRank + slot, BASE = MASTER_PORT + 1
// when MASTER_PORT is set (torchrun's own store has MASTER_PORT), else `defaultBasePort`.

import Collectives
import Foundation
#if canImport(Glibc)
import Glibc
#endif

public enum SchedulerKind: String, Sendable, Equatable {
    case slurm = "Slurm"
    case openMPI = "Open MPI"
    case pmi = "PMI"
    case torchrun = "torchrun"
}

public struct SchedulerEnvironment: Sendable, Equatable {
    public var kind: SchedulerKind
    public var rank: Int
    public var worldSize: Int
    /// The rank's index on its host and the ranks on that host, when the scheduler says.
    public var localRank: Int?
    public var localWorldSize: Int?
    /// The hosts in rank order with their rank counts, when the scheduler names them (Slurm).
    public var hosts: [Topology.Host]?
    public var jobID: String
    /// tcp: the first port of local rank 0 on every host.
    public var basePort: Int
    /// Restarts before this attempt (SLURM_RESTART_COUNT, TORCHELASTIC_RESTART_COUNT).
    public var attempt: Int
    /// The variables that hold the global rank, the world size and the local rank, for messages.
    public var rankVariable: String
    public var sizeVariable: String
    public var localRankVariable: String?

    /// First port when MASTER_PORT does not say (torch's default MASTER_PORT).
    public static let defaultBasePort = 29500

    /// The scheduler that started this process, or nil (none, or our launcher's environment). Throws, naming the
    /// variable, when its environment is incomplete or inconsistent. `parentPID`: PMI's fallback job id.
    public static func detect(_ env: [String: String] = ProcessInfo.processInfo.environment,
                              parentPID: Int32 = getppid()) throws -> SchedulerEnvironment? {
        if RankEnvironment.isLauncher(env) { return nil }
        if let s = try slurm(env) { return s }
        if let s = try openMPI(env) { return s }
        if let s = try pmi(env, parentPID: parentPID) { return s }
        return try torchrun(env)
    }

    /// A note for a process that runs alone although a scheduler allocated several tasks: the Slurm batch script (not a
    /// task of srun) with SLURM_NTASKS > 1.
    public static func aloneWarning(_ env: [String: String] = ProcessInfo.processInfo.environment) -> String? {
        guard env["SLURM_STEP_ID"] == nil, env["SLURM_PROCID"] != nil, let n = env["SLURM_NTASKS"].flatMap(Int.init), n > 1,
              (try? detect(env)).flatMap({ $0 }) == nil else { return nil }
        return "note: SLURM_NTASKS is \(n) but this process is the job's batch script, not a task of srun: it runs alone "
            + "(start the ranks with `srun titan train ...`)"
    }

    // MARK: - Each scheduler

    static func slurm(_ env: [String: String]) throws -> SchedulerEnvironment? {
        guard env["SLURM_PROCID"] != nil, env["SLURM_STEP_ID"] != nil else { return nil }
        let v = Variables(env)
        let rank = try v.int("SLURM_PROCID", atLeast: 0)
        let (sizeName, size) = try v.firstInt(["SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_NPROCS"], atLeast: 1)
        // mpirun or torchrun inside the step started this process: their variables describe it, Slurm's their own task.
        for (r, s) in [("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"), ("PMI_RANK", "PMI_SIZE"), ("RANK", "WORLD_SIZE")]
        where env[r] != nil && (Variables.number(env[r]) != rank || Variables.number(env[s]) != size) {
            return nil
        }
        guard rank < size else { throw v.error("SLURM_PROCID", "must be less than \(sizeName) (\(size))") }
        let (nodesName, nodesText) = try v.firstText(["SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"])
        let nodes: [String]
        do { nodes = try SlurmSyntax.expandHostlist(nodesText) } catch let e as SlurmSyntaxError {
            throw v.error(nodesName, "is not a Slurm hostlist such as node[01-04,07]: \(e)")
        }
        let (tasksName, tasksText) = try v.firstText(["SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"])
        let tasks: [Int]
        do { tasks = try SlurmSyntax.expandTaskCounts(tasksText) } catch let e as SlurmSyntaxError {
            throw v.error(tasksName, "is not a Slurm task-count list such as 4(x2),3: \(e)")
        }
        guard tasks.count == nodes.count else {
            throw v.error(tasksName, "lists \(tasks.count) node(s) but \(nodesName) names \(nodes.count) (\(FileStore.shortList(nodes)))")
        }
        guard tasks.allSatisfy({ $0 >= 1 }) else { throw v.error(tasksName, "must give every node at least one task") }
        guard tasks.reduce(0, +) == size else {
            throw v.error(sizeName, "is \(size) but \(tasksName) (\(tasksText)) adds up to \(tasks.reduce(0, +)) task(s)")
        }
        let hosts = zip(nodes, tasks).map { Topology.Host(address: $0, ranks: $1) }
        guard Set(nodes).count == nodes.count else { throw v.error(nodesName, "names a node twice") }
        // Block placement: this rank's node and local rank follow from its rank.
        var node = 0, first = 0
        while rank >= first + tasks[node] { first += tasks[node]; node += 1 }
        let local = rank - first
        let blockWise = "tasks are placed block-wise (srun's default --distribution=block; other distributions are not supported)"
        if env["SLURM_NODEID"] != nil, try v.int("SLURM_NODEID", atLeast: 0) != node {
            throw v.error("SLURM_NODEID", "should be \(node) (\(nodes[node])) for task \(rank) when \(blockWise)")
        }
        if env["SLURM_LOCALID"] != nil, try v.int("SLURM_LOCALID", atLeast: 0) != local {
            throw v.error("SLURM_LOCALID", "should be \(local) for task \(rank) on \(nodes[node]) when \(blockWise)")
        }
        let job = try v.text("SLURM_JOB_ID")
        let step = env["SLURM_STEP_ID"].flatMap { $0.isEmpty ? nil : "." + $0 } ?? ""
        return SchedulerEnvironment(
            kind: .slurm, rank: rank, worldSize: size, localRank: local, localWorldSize: tasks[node], hosts: hosts,
            jobID: "slurm-" + job + step, basePort: try basePort(v), attempt: try v.optionalInt("SLURM_RESTART_COUNT", atLeast: 0) ?? 0,
            rankVariable: "SLURM_PROCID", sizeVariable: sizeName, localRankVariable: "SLURM_LOCALID")
    }

    static func openMPI(_ env: [String: String]) throws -> SchedulerEnvironment? {
        guard env["OMPI_COMM_WORLD_RANK"] != nil else { return nil }
        let v = Variables(env)
        var s = try v.world(kind: .openMPI, rank: "OMPI_COMM_WORLD_RANK", size: "OMPI_COMM_WORLD_SIZE",
                            localRank: "OMPI_COMM_WORLD_LOCAL_RANK", localSize: "OMPI_COMM_WORLD_LOCAL_SIZE")
        guard let (_, id) = v.first(["OMPI_MCA_ess_base_jobid", "PMIX_NAMESPACE", "OMPI_MCA_orte_ess_jobid"]) else {
            throw v.error("OMPI_MCA_ess_base_jobid", "(or PMIX_NAMESPACE) is required: mpirun sets it, the same for every rank of the job")
        }
        s.jobID = "ompi-" + id
        s.basePort = try basePort(v)
        return s
    }

    static func pmi(_ env: [String: String], parentPID: Int32) throws -> SchedulerEnvironment? {
        guard env["PMI_RANK"] != nil else { return nil }
        let v = Variables(env)
        let hydra = env["MPI_LOCALRANKID"] != nil
        var s = try v.world(kind: .pmi, rank: "PMI_RANK", size: "PMI_SIZE",
                            localRank: hydra ? "MPI_LOCALRANKID" : "PMI_LOCAL_RANK", localSize: hydra ? "MPI_LOCALNRANKS" : "PMI_LOCAL_SIZE")
        if let (_, id) = v.first(["PMI_JOBID", "I_MPI_HYDRA_UUID", "PMIX_NAMESPACE"]) {
            s.jobID = "pmi-" + id
        } else if s.localWorldSize == s.worldSize {
            s.jobID = "pmi-ppid-\(parentPID)"
        } else {
            throw v.error("PMI_JOBID", "is required for ranks on several hosts: the same job id for every rank")
        }
        s.basePort = try basePort(v)
        return s
    }

    static func torchrun(_ env: [String: String]) throws -> SchedulerEnvironment? {
        guard env["RANK"] != nil else { return nil }
        let v = Variables(env)
        var s = try v.world(kind: .torchrun, rank: "RANK", size: "WORLD_SIZE", localRank: "LOCAL_RANK", localSize: "LOCAL_WORLD_SIZE")
        var key = "single"
        if s.worldSize > 1 {
            let address = try v.text("MASTER_ADDR", why: "is required with RANK and WORLD_SIZE (torchrun sets it)")
            let port = try v.int("MASTER_PORT", atLeast: 1, why: "is required with RANK and WORLD_SIZE (torchrun sets it)")
            key = (env["TORCHELASTIC_RUN_ID"] ?? "") + "|" + address + ":" + String(port)
        }
        s.jobID = "torchrun-" + String(fnv1a(key), radix: 16)
        s.basePort = try basePort(v)
        s.attempt = try v.optionalInt("TORCHELASTIC_RESTART_COUNT", atLeast: 0) ?? 0
        return s
    }

    /// MASTER_PORT + 1 (MASTER_PORT itself is torchrun's store), else the default.
    static func basePort(_ v: Variables) throws -> Int {
        guard v.env["MASTER_PORT"] != nil else { return defaultBasePort }
        let port = try v.int("MASTER_PORT", atLeast: 1)
        guard port < 65535 else { throw v.error("MASTER_PORT", "must be at most 65534 (ranks listen from MASTER_PORT + 1 on)") }
        return port + 1
    }

    /// 64-bit FNV-1a: the same on every host and run (Swift's `hashValue` is seeded per process).
    static func fnv1a(_ text: String) -> UInt64 {
        text.utf8.reduce(0xcbf2_9ce4_8422_2325 as UInt64) { ($0 ^ UInt64($1)) &* 0x100_0000_01b3 }
    }

    // MARK: - Identity

    /// Whether the hosts of the ranks are known without a rendezvous.
    public var knowsHosts: Bool { hosts != nil || localWorldSize == worldSize }

    /// This rank's identity and the job's topology. The hosts come from the scheduler, or (MPI, torchrun on several
    /// hosts) from a file store in `rendezvousFolder`: every rank's `hostname`, hosts ordered by their first rank, whose
    /// ranks must be consecutive. The default degrees are those of a local job of the same size (`Topology.local`).
    public func identity(rendezvousFolder: String?, dumpFolder: String?, timeoutSeconds: Double,
                         hostname: String = SchedulerEnvironment.hostname()) throws -> RankIdentity {
        var hosts: [Topology.Host]
        if let known = self.hosts {
            hosts = known
        } else if localWorldSize == worldSize {
            hosts = [Topology.Host(address: hostname, ranks: worldSize)]
        } else {
            guard let rendezvousFolder else {
                throw RendezvousError(reason: "\(kind.rawValue) does not say which host each rank runs on: give the ranks a "
                    + "folder every host sees, where they meet (--rdzv-dir)")
            }
            let store = FileStore(root: rendezvousFolder, jobID: jobID, timeout: timeoutSeconds)
            hosts = try hostsOfRanks(store.exchange(rank: rank, worldSize: worldSize, host: hostname).map(\.host))
        }
        let topology = Topology(name: jobID, transport: hosts.count == 1 ? .ipc : .tcp,
                                basePort: hosts.count == 1 ? nil : basePort, hosts: hosts,
                                parallelism: Topology.local(ranks: worldSize).parallelism)
        let (node, local) = topology.location(ofRank: rank)
        if let localRank, localRank != local {
            throw RankIdentityError(variable: localRankVariable ?? rankVariable, value: String(localRank),
                                    reason: "disagrees with the hosts the ranks reported: rank \(rank) is local rank \(local) on \(hosts[node].address)")
        }
        let lastPort = basePort + hosts.map(\.ranks).max()! * ClusterSpec.maxGroupsPerRank - 1
        if topology.transport == .tcp && lastPort > 65535 {
            throw RankIdentityError(variable: "MASTER_PORT", value: String(basePort - 1),
                                    reason: "leaves too few ports: \(hosts.map(\.ranks).max()!) ranks on a host need ports up to \(lastPort)")
        }
        try topology.validate()
        return RankIdentity(rank: rank, worldSize: worldSize, localRank: local, localWorldSize: hosts[node].ranks,
                            nodeRank: node, jobID: jobID, topologyPath: nil, localRanks: nil,
                            ipcDirectory: "/tmp/titan-" + Launcher.pathSafe(jobID), launcherPID: nil, dumpFolder: dumpFolder,
                            cpus: nil, attempt: attempt, topology: topology, scheduler: kind)
    }

    /// Hosts in the order of their first rank; every host's ranks must be consecutive.
    func hostsOfRanks(_ hostOfRank: [String]) throws -> [Topology.Host] {
        var hosts: [Topology.Host] = []
        for (r, name) in hostOfRank.enumerated() {
            if hosts.last?.address == name {
                hosts[hosts.count - 1].ranks += 1
            } else if hosts.contains(where: { $0.address == name }) {
                let ranks = hostOfRank.indices.filter { hostOfRank[$0] == name }
                throw RankIdentityError(variable: rankVariable, value: String(r),
                                        reason: "puts the ranks of host \(name) (\(FileStore.shortList(ranks))) apart: ranks must be "
                                            + "consecutive on each host (block placement, e.g. mpirun --map-by slot)")
            } else {
                hosts.append(Topology.Host(address: name, ranks: 1))
            }
        }
        return hosts
    }

    /// This machine's name, as the other hosts reach it.
    public static func hostname() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count) == 0 else { return "localhost" }
        return String(cString: buffer)
    }

    /// Kernel threads of a rank the scheduler started (when OPENBLAS_NUM_THREADS does not say): the CPUs of its
    /// affinity mask when the scheduler bound it (the mask is narrower than the machine), else the machine's CPUs
    /// divided by the ranks on this host, as our launcher gives unbound ranks.
    public static func kernelThreads(allowedCPUs: Int, onlineCPUs: Int, ranksOnHost: Int) -> Int {
        if allowedCPUs > 0 && allowedCPUs < onlineCPUs { return allowedCPUs }
        return max(1, (allowedCPUs > 0 ? allowedCPUs : onlineCPUs) / max(1, ranksOnHost))
    }
}

/// Reads one environment's variables; errors name the variable.
struct Variables {
    let env: [String: String]
    init(_ env: [String: String]) { self.env = env }

    func error(_ name: String, _ reason: String) -> RankIdentityError {
        RankIdentityError(variable: name, value: env[name], reason: reason)
    }

    static func number(_ text: String?) -> Int? { text.flatMap { Int($0.trimmingCharacters(in: .whitespaces)) } }

    func first(_ names: [String]) -> (String, String)? {
        for name in names { if let value = env[name], !value.isEmpty { return (name, value) } }
        return nil
    }

    func text(_ name: String, why: String = "is required") throws -> String {
        guard let value = env[name], !value.isEmpty else { throw error(name, why) }
        return value
    }

    func firstText(_ names: [String]) throws -> (String, String) {
        guard let found = first(names) else {
            throw error(names[0], "is required" + (names.count > 1 ? " (or \(names.dropFirst().joined(separator: " or ")))" : ""))
        }
        return found
    }

    func int(_ name: String, atLeast minimum: Int, why: String = "is required") throws -> Int {
        let value = try text(name, why: why)
        guard let n = Self.number(value), n >= minimum else { throw error(name, "must be an integer >= \(minimum)") }
        return n
    }

    func optionalInt(_ name: String, atLeast minimum: Int) throws -> Int? {
        guard let value = env[name], !value.isEmpty else { return nil }
        return try int(name, atLeast: minimum)
    }

    func firstInt(_ names: [String], atLeast minimum: Int) throws -> (String, Int) {
        let (name, _) = try firstText(names)
        return (name, try int(name, atLeast: minimum))
    }

    /// Rank, size and (when set) local rank and size, checked against each other.
    func world(kind: SchedulerKind, rank rankName: String, size sizeName: String,
                        localRank localName: String, localSize localSizeName: String) throws -> SchedulerEnvironment {
        let rank = try int(rankName, atLeast: 0)
        let size = try int(sizeName, atLeast: 1, why: "is required with \(rankName)")
        guard rank < size else { throw error(rankName, "must be less than \(sizeName) (\(size))") }
        let localRank = try optionalInt(localName, atLeast: 0)
        let localSize = try optionalInt(localSizeName, atLeast: 1)
        if let localSize {
            guard localSize <= size else { throw error(localSizeName, "must not exceed \(sizeName) (\(size))") }
            if let localRank, localRank >= localSize {
                throw error(localName, "must be less than \(localSizeName) (\(localSize))")
            }
            if localSize == size, let localRank, localRank != rank {
                throw error(localName, "must equal \(rankName) (\(rank)) when all \(size) ranks are on one host (\(localSizeName))")
            }
        }
        return SchedulerEnvironment(kind: kind, rank: rank, worldSize: size, localRank: localRank, localWorldSize: localSize,
                                    hosts: nil, jobID: "", basePort: SchedulerEnvironment.defaultBasePort, attempt: 0,
                                    rankVariable: rankName, sizeVariable: sizeName, localRankVariable: localName)
    }
}
