import XCTest
import Collectives
@testable import Cluster

/// Slurm's list syntax, each scheduler's environment (hand-made, as each one sets it) turned into a rank identity and a
/// topology, inconsistent environments named by their variable, and the file store ranks meet in.
final class SchedulerEnvironmentTests: XCTestCase {
    // MARK: - Slurm's lists

    func testHostlistExpansion() throws {
        XCTAssertEqual(try SlurmSyntax.expandHostlist("node[01-04,07],gpu[1-2]"),
                       ["node01", "node02", "node03", "node04", "node07", "gpu1", "gpu2"])
        XCTAssertEqual(try SlurmSyntax.expandHostlist("vm"), ["vm"])
        XCTAssertEqual(try SlurmSyntax.expandHostlist("a1,b2"), ["a1", "b2"])
        XCTAssertEqual(try SlurmSyntax.expandHostlist("n[8-10]"), ["n8", "n9", "n10"])
        XCTAssertEqual(try SlurmSyntax.expandHostlist("n[08-10]"), ["n08", "n09", "n10"])
        XCTAssertEqual(try SlurmSyntax.expandHostlist("n[3]"), ["n3"])
        XCTAssertEqual(try SlurmSyntax.expandHostlist("rack[1-2]-n[1-2]"), ["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"])
        XCTAssertEqual(try SlurmSyntax.expandHostlist("c[1-2].cluster,login"), ["c1.cluster", "c2.cluster", "login"])
        for bad in ["", "node[01-", "node]1", "node[4-2]", "node[a-b]", "node[]", "n[[1]]", "n[1-2-3]", "a,,b", "n[-1]"] {
            XCTAssertThrowsError(try SlurmSyntax.expandHostlist(bad), bad)
        }
    }

    func testTaskCountExpansion() throws {
        XCTAssertEqual(try SlurmSyntax.expandTaskCounts("4(x2),3"), [4, 4, 3])
        XCTAssertEqual(try SlurmSyntax.expandTaskCounts("2"), [2])
        XCTAssertEqual(try SlurmSyntax.expandTaskCounts("1(x3)"), [1, 1, 1])
        XCTAssertEqual(try SlurmSyntax.expandTaskCounts("2,1(x2),5"), [2, 1, 1, 5])
        for bad in ["", "x", "4(x0)", "4(2)", "4(x2", "-1", "2,,3", "4(y2)"] {
            XCTAssertThrowsError(try SlurmSyntax.expandTaskCounts(bad), bad)
        }
    }

    // MARK: - Slurm

    /// Task 3 of 4 on two nodes, as srun sets it (step variables beside the job's).
    let slurm: [String: String] = [
        "SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_STEP_NUM_TASKS": "4", "SLURM_LOCALID": "1", "SLURM_NODEID": "1",
        "SLURM_JOB_ID": "77", "SLURM_STEP_ID": "0", "SLURM_JOB_NODELIST": "node[01-02]", "SLURM_STEP_NODELIST": "node[01-02]",
        "SLURM_TASKS_PER_NODE": "2(x2)", "SLURM_STEP_TASKS_PER_NODE": "2(x2)",
    ]

    func testSlurmOnTwoNodesIsTCPOnTheNodeNames() throws {
        let s = try XCTUnwrap(SchedulerEnvironment.detect(slurm))
        XCTAssertEqual(s.kind, .slurm)
        XCTAssertEqual(s.jobID, "slurm-77.0")
        XCTAssertEqual(s.hosts, [Topology.Host(address: "node01", ranks: 2), Topology.Host(address: "node02", ranks: 2)])
        let identity = try s.identity(rendezvousFolder: nil, dumpFolder: "/tmp/out", timeoutSeconds: 5)
        XCTAssertEqual([identity.rank, identity.worldSize, identity.localRank, identity.localWorldSize, identity.nodeRank],
                       [3, 4, 1, 2, 1])
        XCTAssertEqual(identity.scheduler, .slurm)
        XCTAssertNil(identity.cpus, "a scheduler's binding is kept, not replaced")
        XCTAssertNil(identity.launcherPID)
        XCTAssertEqual(identity.dumpFolder, "/tmp/out")
        let spec = try identity.clusterSpec(timeoutSeconds: 5)
        XCTAssertEqual(spec.transport, .tcp)
        XCTAssertEqual(spec.hostOfRank, ["node01", "node01", "node02", "node02"])
        XCTAssertEqual(spec.portOfRank, [29500, 29516, 29500, 29516])
        XCTAssertEqual(spec.jobID, "slurm-77.0")
        // The default degrees are those of a local job of the same size.
        XCTAssertEqual(try identity.loadTopology().parallelism, Topology.local(ranks: 4).parallelism)

        var env = slurm
        env["MASTER_PORT"] = "40000"
        XCTAssertEqual(try SchedulerEnvironment.detect(env)?.identity(rendezvousFolder: nil, dumpFolder: nil, timeoutSeconds: 5)
            .clusterSpec(timeoutSeconds: 5).portOfRank, [40001, 40017, 40001, 40017])
    }

    func testSlurmOnOneNodeIsIPC() throws {
        let env = ["SLURM_PROCID": "2", "SLURM_NTASKS": "4", "SLURM_LOCALID": "2", "SLURM_NODEID": "0", "SLURM_JOB_ID": "9",
                   "SLURM_STEP_ID": "3", "SLURM_JOB_NODELIST": "vm", "SLURM_TASKS_PER_NODE": "4"]
        let identity = try XCTUnwrap(SchedulerEnvironment.detect(env)).identity(rendezvousFolder: nil, dumpFolder: nil, timeoutSeconds: 5)
        XCTAssertEqual(identity.jobID, "slurm-9.3")
        XCTAssertEqual(identity.ipcDirectory, "/tmp/titan-slurm-9.3")
        let spec = try identity.clusterSpec(timeoutSeconds: 5)
        XCTAssertEqual(spec.transport, .ipc)
        XCTAssertEqual(spec.worldSize, 4)
        XCTAssertEqual(spec.ipcDirectory, "/tmp/titan-slurm-9.3")
        XCTAssertEqual(identity.localRank, 2)
    }

    /// A step on part of the job's nodes: the step's variables describe it, not the job's.
    func testSlurmStepVariablesWinOverTheJobs() throws {
        var env = slurm
        env["SLURM_JOB_NODELIST"] = "node[01-04]"
        env["SLURM_TASKS_PER_NODE"] = "8(x4)"
        env["SLURM_NTASKS"] = "32"
        let s = try XCTUnwrap(SchedulerEnvironment.detect(env))
        XCTAssertEqual(s.worldSize, 4)
        XCTAssertEqual(s.hosts?.map(\.address), ["node01", "node02"])
    }

    /// The batch script runs with SLURM_PROCID=0 but is no task of a step: not a rank (it says so when it runs alone).
    func testSlurmBatchScriptIsNotARank() throws {
        let env = ["SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_JOB_ID": "9", "SLURM_JOB_NODELIST": "vm",
                   "SLURM_TASKS_PER_NODE": "4"]
        XCTAssertNil(try SchedulerEnvironment.detect(env))
        XCTAssertTrue(SchedulerEnvironment.aloneWarning(env)?.contains("srun") ?? false)
        XCTAssertNil(SchedulerEnvironment.aloneWarning(slurm))
    }

    /// mpirun or torchrun inside a Slurm step started this process: their rank, not Slurm's task, is the rank.
    func testAStarterInsideASlurmStepWins() throws {
        var env = slurm.merging(["SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_STEP_NUM_TASKS": "2",
                                 "SLURM_STEP_TASKS_PER_NODE": "1(x2)", "SLURM_LOCALID": "0"]) { $1 }
        env.merge(["OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_SIZE": "8", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
                   "OMPI_COMM_WORLD_LOCAL_SIZE": "4", "OMPI_MCA_ess_base_jobid": "123"]) { $1 }
        XCTAssertEqual(try SchedulerEnvironment.detect(env)?.kind, .openMPI)
        var torch = slurm.merging(["SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_STEP_NUM_TASKS": "2",
                                   "SLURM_STEP_TASKS_PER_NODE": "1(x2)", "SLURM_LOCALID": "0"]) { $1 }
        torch.merge(["RANK": "6", "WORLD_SIZE": "8", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "4",
                     "MASTER_ADDR": "node01", "MASTER_PORT": "29500"]) { $1 }
        XCTAssertEqual(try SchedulerEnvironment.detect(torch)?.kind, .torchrun)
        // srun --mpi=pmi2 sets PMI_RANK = SLURM_PROCID: Slurm still, which names the hosts.
        let pmi2 = slurm.merging(["PMI_RANK": "3", "PMI_SIZE": "4"]) { $1 }
        XCTAssertEqual(try SchedulerEnvironment.detect(pmi2)?.kind, .slurm)
    }

    func testInconsistentSlurmEnvironmentsNameTheVariable() {
        let cases: [(change: [String: String?], variable: String)] = [
            (["SLURM_NTASKS": "5", "SLURM_STEP_NUM_TASKS": nil], "SLURM_NTASKS"),
            (["SLURM_STEP_NUM_TASKS": "5"], "SLURM_STEP_NUM_TASKS"),
            (["SLURM_STEP_TASKS_PER_NODE": "2,2,2"], "SLURM_STEP_TASKS_PER_NODE"),
            (["SLURM_STEP_TASKS_PER_NODE": nil, "SLURM_TASKS_PER_NODE": "3(x2)"], "SLURM_STEP_NUM_TASKS"),
            (["SLURM_STEP_TASKS_PER_NODE": "4,0"], "SLURM_STEP_TASKS_PER_NODE"),
            (["SLURM_STEP_TASKS_PER_NODE": "two"], "SLURM_STEP_TASKS_PER_NODE"),
            (["SLURM_STEP_TASKS_PER_NODE": nil, "SLURM_TASKS_PER_NODE": nil], "SLURM_STEP_TASKS_PER_NODE"),
            (["SLURM_STEP_NODELIST": "node[01-"], "SLURM_STEP_NODELIST"),
            (["SLURM_STEP_NODELIST": nil, "SLURM_JOB_NODELIST": "node[1,1]"], "SLURM_JOB_NODELIST"),
            (["SLURM_PROCID": "4"], "SLURM_PROCID"),
            (["SLURM_PROCID": "x"], "SLURM_PROCID"),
            (["SLURM_LOCALID": "0"], "SLURM_LOCALID"),
            (["SLURM_NODEID": "0"], "SLURM_NODEID"),
            (["SLURM_JOB_ID": nil], "SLURM_JOB_ID"),
            (["SLURM_NTASKS": nil, "SLURM_STEP_NUM_TASKS": nil], "SLURM_STEP_NUM_TASKS"),
            (["MASTER_PORT": "x"], "MASTER_PORT"),
            (["MASTER_PORT": "65535"], "MASTER_PORT"),
        ]
        assertErrors(base: slurm, cases)
    }

    // MARK: - Open MPI

    /// Rank 2 of 4 on one host, as Debian's openmpi-bin 4.1 sets it (`mpirun -np 4 env`).
    let openMPI: [String: String] = [
        "OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "2",
        "OMPI_COMM_WORLD_LOCAL_SIZE": "4", "OMPI_COMM_WORLD_NODE_RANK": "2", "OMPI_MCA_ess_base_jobid": "1642528769",
        "PMIX_NAMESPACE": "1642528769", "PMIX_RANK": "2",
    ]

    func testOpenMPIOnOneHostIsIPCWithoutTalking() throws {
        let s = try XCTUnwrap(SchedulerEnvironment.detect(openMPI))
        XCTAssertEqual(s.kind, .openMPI)
        XCTAssertTrue(s.knowsHosts)
        let identity = try s.identity(rendezvousFolder: nil, dumpFolder: nil, timeoutSeconds: 5, hostname: "vm")
        XCTAssertEqual(identity.jobID, "ompi-1642528769")
        XCTAssertEqual([identity.rank, identity.localRank, identity.localWorldSize, identity.nodeRank], [2, 2, 4, 0])
        XCTAssertEqual(try identity.clusterSpec(timeoutSeconds: 5).transport, .ipc)
        // Open MPI 5 has PMIX_NAMESPACE only.
        var five = openMPI
        five["OMPI_MCA_ess_base_jobid"] = nil
        five["PMIX_NAMESPACE"] = "prterun-vm-123@1"
        XCTAssertEqual(try SchedulerEnvironment.detect(five)?.jobID, "ompi-prterun-vm-123@1")
    }

    func testOpenMPIOnSeveralHostsNeedsARendezvousFolder() throws {
        let env = openMPI.merging(["OMPI_COMM_WORLD_LOCAL_SIZE": "2", "OMPI_COMM_WORLD_LOCAL_RANK": "0"]) { $1 }
        let s = try XCTUnwrap(SchedulerEnvironment.detect(env))
        XCTAssertFalse(s.knowsHosts)
        XCTAssertThrowsError(try s.identity(rendezvousFolder: nil, dumpFolder: nil, timeoutSeconds: 5)) { error in
            XCTAssertTrue("\(error)".contains("--rdzv-dir"), "\(error)")
        }
    }

    func testInconsistentOpenMPIEnvironmentsNameTheVariable() {
        assertErrors(base: openMPI, [
            (["OMPI_COMM_WORLD_RANK": "4"], "OMPI_COMM_WORLD_RANK"),
            (["OMPI_COMM_WORLD_SIZE": nil], "OMPI_COMM_WORLD_SIZE"),
            (["OMPI_COMM_WORLD_SIZE": "0"], "OMPI_COMM_WORLD_SIZE"),
            (["OMPI_COMM_WORLD_LOCAL_RANK": "4"], "OMPI_COMM_WORLD_LOCAL_RANK"),
            (["OMPI_COMM_WORLD_LOCAL_RANK": "1"], "OMPI_COMM_WORLD_LOCAL_RANK"),
            (["OMPI_COMM_WORLD_LOCAL_SIZE": "5"], "OMPI_COMM_WORLD_LOCAL_SIZE"),
            (["OMPI_MCA_ess_base_jobid": nil, "PMIX_NAMESPACE": nil], "OMPI_MCA_ess_base_jobid"),
        ])
    }

    // MARK: - PMI

    func testPMI() throws {
        let env = ["PMI_RANK": "1", "PMI_SIZE": "2", "PMI_JOBID": "j7", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "2"]
        let s = try XCTUnwrap(SchedulerEnvironment.detect(env))
        XCTAssertEqual(s.kind, .pmi)
        XCTAssertEqual(s.jobID, "pmi-j7")
        XCTAssertEqual(try s.identity(rendezvousFolder: nil, dumpFolder: nil, timeoutSeconds: 5).clusterSpec(timeoutSeconds: 5).transport, .ipc)
        // On one host without a job id: the parent, the launcher's proxy every local rank shares.
        let noID = env.filter { $0.key != "PMI_JOBID" }
        XCTAssertEqual(try SchedulerEnvironment.detect(noID, parentPID: 4242)?.jobID, "pmi-ppid-4242")
        assertErrors(base: env, [
            (["PMI_RANK": "2"], "PMI_RANK"),
            (["PMI_SIZE": nil], "PMI_SIZE"),
            (["MPI_LOCALRANKID": "2"], "MPI_LOCALRANKID"),
            (["PMI_JOBID": nil, "MPI_LOCALRANKID": nil, "MPI_LOCALNRANKS": nil], "PMI_JOBID"),
        ])
    }

    // MARK: - torchrun

    let torchrun: [String: String] = [
        "RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4", "GROUP_RANK": "0",
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29400", "TORCHELASTIC_RUN_ID": "none", "TORCHELASTIC_RESTART_COUNT": "1",
    ]

    func testTorchrunStyleEnvironment() throws {
        let s = try XCTUnwrap(SchedulerEnvironment.detect(torchrun))
        XCTAssertEqual(s.kind, .torchrun)
        XCTAssertEqual(s.attempt, 1)
        XCTAssertEqual(s.basePort, 29401, "MASTER_PORT is torchrun's own store")
        // Every rank derives the same job id; another MASTER_PORT is another job.
        XCTAssertEqual(try SchedulerEnvironment.detect(torchrun.merging(["RANK": "3", "LOCAL_RANK": "3"]) { $1 })?.jobID, s.jobID)
        XCTAssertNotEqual(try SchedulerEnvironment.detect(torchrun.merging(["MASTER_PORT": "29401"]) { $1 })?.jobID, s.jobID)
        let identity = try s.identity(rendezvousFolder: nil, dumpFolder: nil, timeoutSeconds: 5)
        XCTAssertEqual(identity.attempt, 1)
        XCTAssertEqual(try identity.clusterSpec(timeoutSeconds: 5).transport, .ipc)
        // One rank needs nothing more.
        XCTAssertEqual(try SchedulerEnvironment.detect(["RANK": "0", "WORLD_SIZE": "1"])?.worldSize, 1)
        assertErrors(base: torchrun, [
            (["RANK": "4"], "RANK"),
            (["WORLD_SIZE": nil], "WORLD_SIZE"),
            (["LOCAL_RANK": "4"], "LOCAL_RANK"),
            (["LOCAL_WORLD_SIZE": "8"], "LOCAL_WORLD_SIZE"),
            (["MASTER_ADDR": nil], "MASTER_ADDR"),
            (["MASTER_PORT": nil], "MASTER_PORT"),
            (["TORCHELASTIC_RESTART_COUNT": "-1"], "TORCHELASTIC_RESTART_COUNT"),
        ])
    }

    /// Our launcher's environment has RANK and WORLD_SIZE too: its TITAN_* variables make it the launcher's.
    func testTheLaunchersEnvironmentIsNotTorchruns() throws {
        let launcher = torchrun.merging(["TITAN_JOB_ID": "j", "TITAN_TOPOLOGY": "", "TITAN_LOCAL_RANKS": "4",
                                         "TITAN_IPC_DIR": "/tmp/titan-j", "NODE_RANK": "0"]) { $1 }
        XCTAssertNil(try SchedulerEnvironment.detect(launcher))
        XCTAssertNotNil(try RankIdentity.fromEnvironment(launcher))
        XCTAssertNil(try RankIdentity.fromEnvironment(torchrun))
        // The launcher's variables come before a scheduler's it runs under.
        XCTAssertNil(try SchedulerEnvironment.detect(launcher.merging(slurm) { $1 }))
    }

    // MARK: - The file store

    /// Four ranks on two hosts that the scheduler does not name meet in the file store: hosts in the order of their
    /// first rank, tcp between them, and the folder is gone afterwards.
    func testRanksOnSeveralHostsMeetInTheFileStore() throws {
        let folder = try temporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let hosts = ["b", "b", "a", "a"]
        let results = meet(hosts: hosts, folder: folder)
        for (rank, result) in results.enumerated() {
            let identity = try result.get()
            XCTAssertEqual(identity.rank, rank)
            XCTAssertEqual(identity.nodeRank, rank / 2)
            XCTAssertEqual(identity.localRank, rank % 2)
            let spec = try identity.clusterSpec(timeoutSeconds: 5)
            XCTAssertEqual(spec.transport, .tcp)
            XCTAssertEqual(spec.hostOfRank, hosts)
            XCTAssertEqual(spec.portOfRank, [29500, 29516, 29500, 29516])
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: folder), [], "the rendezvous folder is removed")
    }

    /// Ranks of one host must be consecutive (the topology numbers ranks host by host).
    func testRanksOfAHostApartAreAnError() throws {
        let folder = try temporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        for result in meet(hosts: ["a", "b", "a", "b"], folder: folder) {
            XCTAssertThrowsError(try result.get()) { error in
                XCTAssertEqual((error as? RankIdentityError)?.variable, "OMPI_COMM_WORLD_RANK", "\(error)")
                XCTAssertTrue("\(error)".contains("consecutive"), "\(error)")
            }
        }
    }

    /// A rank that never comes is named after the timeout; an entry of an earlier run of the job id does not count.
    func testAMissingRankIsNamedAfterTheTimeout() throws {
        let folder = try temporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let store = FileStore(root: folder, jobID: "j", timeout: 0.5)
        try FileManager.default.createDirectory(atPath: store.folder, withIntermediateDirectories: true)
        let stale = FileStore.Entry(rank: 1, worldSize: 2, host: "a", written: Date().timeIntervalSince1970 - 3600)
        try JSONEncoder().encode(stale).write(to: URL(fileURLWithPath: store.folder + "/rank-1.json"))
        XCTAssertThrowsError(try store.exchange(rank: 0, worldSize: 2, host: "a")) { error in
            XCTAssertTrue("\(error)".contains("rank(s) 1 of 2"), "\(error)")
        }
    }

    func testKernelThreads() {
        XCTAssertEqual(SchedulerEnvironment.kernelThreads(allowedCPUs: 1, onlineCPUs: 2, ranksOnHost: 2), 1, "bound to one CPU")
        XCTAssertEqual(SchedulerEnvironment.kernelThreads(allowedCPUs: 4, onlineCPUs: 16, ranksOnHost: 4), 4, "bound to four")
        XCTAssertEqual(SchedulerEnvironment.kernelThreads(allowedCPUs: 2, onlineCPUs: 2, ranksOnHost: 4), 1, "unbound, oversubscribed")
        XCTAssertEqual(SchedulerEnvironment.kernelThreads(allowedCPUs: 8, onlineCPUs: 8, ranksOnHost: 2), 4, "unbound: a share")
        XCTAssertEqual(SchedulerEnvironment.kernelThreads(allowedCPUs: 0, onlineCPUs: 8, ranksOnHost: 2), 4, "mask unknown")
    }

    // MARK: - helpers

    /// Open MPI ranks of `hosts.count`, rank r on host hosts[r], meeting in `folder` (threads, one per rank).
    func meet(hosts: [String], folder: String) -> [Result<RankIdentity, Error>] {
        let results = ResultBox(count: hosts.count)
        let done = DispatchGroup()
        for rank in hosts.indices {   // a thread each: every rank waits for the others
            done.enter()
            Thread {
                let env = ["OMPI_COMM_WORLD_RANK": "\(rank)", "OMPI_COMM_WORLD_SIZE": "\(hosts.count)",
                           "OMPI_MCA_ess_base_jobid": "55"]
                results.set(rank, Result {
                    try SchedulerEnvironment.detect(env)!.identity(rendezvousFolder: folder, dumpFolder: nil, timeoutSeconds: 20,
                                                                    hostname: hosts[rank])
                })
                done.leave()
            }.start()
        }
        done.wait()
        return results.values
    }

    /// Each change of `base` throws an error naming `variable`.
    func assertErrors(base: [String: String], _ cases: [(change: [String: String?], variable: String)],
                      file: StaticString = #filePath, line: UInt = #line) {
        for (change, variable) in cases {
            var env = base
            for (key, value) in change { env[key] = value }
            XCTAssertThrowsError(try SchedulerEnvironment.detect(env)?.identity(rendezvousFolder: nil, dumpFolder: nil,
                                                                                  timeoutSeconds: 1),
                                 "\(change)", file: file, line: line) { error in
                let error = error as? RankIdentityError
                XCTAssertEqual(error?.variable, variable, "\(change): \(String(describing: error))", file: file, line: line)
                XCTAssertTrue(error?.description.contains(variable) ?? false, file: file, line: line)
            }
        }
    }
}

private final class ResultBox: @unchecked Sendable {
    private let lock = NSLock()
    private(set) var values: [Result<RankIdentity, Error>]
    init(count: Int) { values = Array(repeating: .failure(CancellationError()), count: count) }
    func set(_ i: Int, _ v: Result<RankIdentity, Error>) { lock.lock(); values[i] = v; lock.unlock() }
}
