// Distributed checkpoints (torch DCP semantics): topology-independent, resharded on load, atomic.
//
// Layout of `checkpoint.folder` (relative to job.dump_folder unless absolute):
//
//   latest                       "step-N\n": the newest COMPLETE checkpoint (written to a temp file + renamed)
//   step-N/metadata.json         rank 0: format version, step, data-loader position, LR-schedule step, model
//                                args, the topology it was saved on, and for every state key its global shape,
//                                dtype and pieces (file, tensor name, offset, count) in the flattened tensor
//   step-N/rank-K.safetensors    every rank of replica 0: for each of its ParameterShards (a contiguous range
//                                [offset, offset+count) of the FULL flattened parameter) the tensors
//                                  model/<fqn>@<offset>, optim/exp_avg/<fqn>@<offset>, optim/exp_avg_sq/<fqn>@<offset>
//                                (shape [count], F32); rank 0 also holds buffer/<fqn> (MoE expert_bias)
//   step-N.tmp-<jobid>/          a save in progress (or a crashed one: ignored; removed by the next good save)
//   step-N-hf/                   HF export (config.json + model.safetensors) when checkpoint.last_save_in_hf
//
// State keys in metadata.json: "model/<fqn>", "optim/exp_avg/<fqn>", "optim/exp_avg_sq/<fqn>" (global shape of
// the parameter), and buffers by "<fqn>". What this file saves and loads is generic: `StatePiece`s (a range of a
// keyed tensor, as a parameter shard holds it) and the model's buffers; the Checkpointer names them.
//
// Save protocol: rank 0 (re)creates step-N.tmp-<jobid>/, world barrier, writers write (temp file, fsync, rename) their
// rank file, then every rank's list of pieces goes to rank 0 (an all-gather), which writes metadata.json (fsync),
// fsyncs the folder, renames it to step-N, fsyncs the parent, then replaces `latest` (temp + fsync + rename), prunes
// (keep_latest_k) and removes stale temp folders; a final world barrier. A rank killed anywhere in this sequence
// leaves `latest` and the step folder it names untouched.
//
// The trainer draws no random numbers after initialisation (no dropout), so there is no RNG state to keep; the
// data loader's position is the step (DataLoader.batch(step:)) and the LR schedule is a function of the step.
//
// Test hook: TITAN_TEST_CRASH_DURING_SAVE=RANK:STEP[:POINT] makes rank RANK SIGKILL itself while saving step STEP,
// at POINT: `rank-file` (default: right after it wrote its rank file into the temp folder, before the barrier),
// `metadata` (rank 0: metadata written into the temp folder, not renamed yet) or `renamed` (rank 0: step-N in
// place, `latest` not moved yet); on a job's first attempt only (a restart then saves).

import Collectives
import Config
import Foundation
import Model
import Parallel
import Tensor
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public struct CheckpointError: Error, CustomStringConvertible, Equatable {
    /// The file or folder at fault.
    public let path: String
    public let reason: String
    public init(path: String, _ reason: String) {
        self.path = path
        self.reason = reason
    }
    public var description: String { "checkpoint \(path): \(reason)" }
}

/// One contiguous piece of a flattened tensor, stored as a 1-D tensor in a rank file.
public struct CheckpointPiece: Codable, Equatable, Sendable {
    public var file: String
    public var tensor: String
    public var offset: Int
    public var count: Int
    public init(file: String, tensor: String, offset: Int, count: Int) {
        self.file = file; self.tensor = tensor; self.offset = offset; self.count = count
    }
}

public struct CheckpointEntry: Codable, Equatable, Sendable {
    public var shape: [Int]
    public var dtype: String
    public var pieces: [CheckpointPiece]
    public var numel: Int { shape.reduce(1, *) }
    public init(shape: [Int], dtype: String = "F32", pieces: [CheckpointPiece]) {
        self.shape = shape; self.dtype = dtype; self.pieces = pieces
    }
}

public struct CheckpointTopology: Codable, Equatable, Sendable {
    public var world_size: Int
    public var replicate: Int
    public var shard: Int
    public var ep: Int
}

public struct CheckpointMetadata: Codable, Equatable, Sendable {
    public static let currentFormatVersion = 1
    public static let formatName = "swifttitan-dcp"

    public var format: String
    public var format_version: Int
    public var step: Int
    /// The step after which the data loader's state below was taken (the step, in checkpoints of before it).
    public var dataloader_position: Int
    /// The next window and, for a document file, where it starts (nil in older checkpoints: the next window is then
    /// step × the global batch size).
    public var dataloader: DataLoaderState?
    public var lr_scheduler_step: Int
    public var rng: String
    public var model_args: ModelArgs
    public var topology: CheckpointTopology
    public var job_id: String
    /// Rank files of this checkpoint.
    public var files: [String]
    /// "model/<fqn>", "optim/exp_avg/<fqn>", "optim/exp_avg_sq/<fqn>" → layout.
    public var state: [String: CheckpointEntry]
    /// Buffer fqn → one piece holding the whole buffer.
    public var buffers: [String: CheckpointEntry]
}

/// A piece of checkpointed state this rank holds: elements [offset, offset + count) of the flattened tensor `key`
/// of full shape `shape` (a parameter shard, or an optimizer moment of one).
public struct StatePiece {
    public let key: String
    public let shape: [Int]
    public let offset: Int
    public let count: Int
    public let values: UnsafeMutablePointer<Float>

    public init(key: String, shape: [Int], offset: Int, count: Int, values: UnsafeMutablePointer<Float>) {
        self.key = key; self.shape = shape; self.offset = offset; self.count = count; self.values = values
    }

    /// Its tensor's name in the rank file.
    var tensorName: String { key + "@\(offset)" }
}

public enum Checkpoint {
    public static let latestFileName = "latest"
    public static let metadataFileName = "metadata.json"
    public static let crashEnvironmentVariable = "TITAN_TEST_CRASH_DURING_SAVE"

    public static func stepFolderName(_ step: Int) -> String { "step-\(step)" }
    public static func rankFileName(_ rank: Int) -> String { "rank-\(rank).safetensors" }

    static func join(_ a: String, _ b: String) -> String { (a as NSString).appendingPathComponent(b) }

    // MARK: finding checkpoints

    /// Step of a complete step folder name ("step-12" → 12); nil for temp folders, HF exports and anything else.
    public static func stepNumber(_ name: String) -> Int? {
        guard name.hasPrefix("step-") else { return nil }
        let rest = name.dropFirst(5)
        guard !rest.isEmpty, rest.allSatisfy({ $0.isASCII && $0.isNumber }) else { return nil }
        return Int(rest)
    }

    /// The step folder to resume from: the one `latest` names; without `latest`, the newest step-N that has a
    /// metadata.json. nil when the folder holds no checkpoint.
    public static func latestStepFolder(in folder: String) throws -> String? {
        let fm = FileManager.default
        let latest = join(folder, latestFileName)
        if fm.fileExists(atPath: latest) {
            guard let text = try? String(contentsOfFile: latest, encoding: .utf8) else {
                throw CheckpointError(path: latest, "cannot read the latest marker")
            }
            let name = text.trimmingCharacters(in: .whitespacesAndNewlines)
            guard stepNumber(name) != nil else {
                throw CheckpointError(path: latest, "names '\(name)', expected step-N")
            }
            let step = join(folder, name)
            guard fm.fileExists(atPath: join(step, metadataFileName)) else {
                throw CheckpointError(path: step, "named by \(latest) but has no \(metadataFileName) (deleted or incomplete)")
            }
            return step
        }
        guard let names = try? fm.contentsOfDirectory(atPath: folder) else { return nil }
        let steps = names.compactMap { n in stepNumber(n).map { ($0, n) } }
            .filter { fm.fileExists(atPath: join(join(folder, $0.1), metadataFileName)) }
            .sorted { $0.0 > $1.0 }
        return steps.first.map { join(folder, $0.1) }
    }

    /// A step folder, or a checkpoint folder holding `latest` (then the step it names).
    public static func resolveStepFolder(_ path: String) throws -> String {
        if FileManager.default.fileExists(atPath: join(path, metadataFileName)) { return path }
        if let s = try latestStepFolder(in: path) { return s }
        throw CheckpointError(path: path, "is neither a checkpoint step folder (no \(metadataFileName)) nor a checkpoint folder with a \(latestFileName) marker or step-N folders")
    }

    // MARK: metadata

    public static func readMetadata(stepFolder: String) throws -> CheckpointMetadata {
        let path = join(stepFolder, metadataFileName)
        guard let data = FileManager.default.contents(atPath: path) else {
            throw CheckpointError(path: path, "missing or unreadable")
        }
        let meta: CheckpointMetadata
        do {
            meta = try JSONDecoder().decode(CheckpointMetadata.self, from: data)
        } catch {
            throw CheckpointError(path: path, "not a valid checkpoint metadata file: \(error)")
        }
        guard meta.format == CheckpointMetadata.formatName, meta.format_version == CheckpointMetadata.currentFormatVersion else {
            throw CheckpointError(path: path, "format \(meta.format) version \(meta.format_version); this build reads \(CheckpointMetadata.formatName) version \(CheckpointMetadata.currentFormatVersion)")
        }
        return meta
    }

    /// Checks that the pieces of every entry tile [0, numel) exactly (no gap, no overlap).
    public static func validateCoverage(_ meta: CheckpointMetadata, path: String) throws {
        for (key, e) in meta.state.sorted(by: { $0.key < $1.key }) {
            var cursor = 0
            for p in e.pieces.sorted(by: { $0.offset < $1.offset }) {
                guard p.count > 0 else { throw CheckpointError(path: path, "'\(key)': piece \(p.tensor) in \(p.file) is empty") }
                if p.offset > cursor {
                    throw CheckpointError(path: path, "'\(key)': elements \(cursor)..<\(p.offset) of \(e.numel) are in no piece (missing rank file or shard)")
                }
                if p.offset < cursor {
                    throw CheckpointError(path: path, "'\(key)': piece \(p.tensor) in \(p.file) overlaps elements before \(cursor)")
                }
                cursor = p.offset + p.count
            }
            if cursor != e.numel {
                throw CheckpointError(path: path, "'\(key)': pieces cover \(cursor) of \(e.numel) elements (missing rank file or shard)")
            }
        }
    }

    /// Compares the checkpoint's state keys (`expected`: every key with its full shape) and buffers with the run's.
    public static func validateModel(_ meta: CheckpointMetadata, expected: [String: [Int]], bufferShapes: [String: [Int]],
                                     args: ModelArgs, path: String) throws {
        var problems: [String] = []
        for (key, shape) in expected.sorted(by: { $0.key < $1.key }) {
            guard let e = meta.state[key] else { problems.append("missing '\(key)'"); continue }
            if e.shape != shape { problems.append("'\(key)' has shape \(e.shape), the model \(shape)") }
            if e.dtype != "F32" { problems.append("'\(key)' has dtype \(e.dtype), expected F32") }
        }
        for key in meta.state.keys.sorted() where expected[key] == nil { problems.append("unexpected '\(key)'") }
        for (fqn, shape) in bufferShapes.sorted(by: { $0.key < $1.key }) {
            if let e = meta.buffers[fqn], e.shape != shape { problems.append("buffer '\(fqn)' has shape \(e.shape), the model \(shape)") }
        }
        if !problems.isEmpty {
            let shown = problems.prefix(5).joined(separator: "; ") + (problems.count > 5 ? "; and \(problems.count - 5) more" : "")
            throw CheckpointError(path: path, "does not match the model: saved for (\(meta.model_args.summary)), this run builds (\(args.summary)): \(shown)")
        }
    }

    // MARK: reading pieces

    /// Opened rank files of one checkpoint, with validated headers; reads element ranges of pieces.
    public final class PieceReader {
        public let stepFolder: String
        var readers: [String: SafeTensorsReader] = [:]
        var handles: [String: FileHandle] = [:]

        public init(stepFolder: String, meta: CheckpointMetadata) throws {
            self.stepFolder = stepFolder
            let metaPath = Checkpoint.join(stepFolder, Checkpoint.metadataFileName)
            for file in meta.files {
                let path = Checkpoint.join(stepFolder, file)
                guard FileManager.default.fileExists(atPath: path) else {
                    throw CheckpointError(path: path, "missing: \(metaPath) lists it (saved on \(meta.topology.world_size) ranks)")
                }
                let r: SafeTensorsReader
                do { r = try SafeTensorsReader(path: path) } catch {
                    throw CheckpointError(path: path, "unreadable rank file: \(error)")
                }
                readers[file] = r
            }
            for (key, e) in meta.state.merging(meta.buffers, uniquingKeysWith: { a, _ in a }) {
                for p in e.pieces {
                    guard let r = readers[p.file] else {
                        throw CheckpointError(path: metaPath, "'\(key)' names \(p.file), which is not among the checkpoint's files")
                    }
                    guard let info = r.header.tensors[p.tensor] else {
                        throw CheckpointError(path: r.path, "has no tensor '\(p.tensor)' (needed for '\(key)')")
                    }
                    guard info.dtype == .F32, info.elementCount == p.count else {
                        throw CheckpointError(path: r.path, "tensor '\(p.tensor)' is \(info.dtype.rawValue) \(info.shape), metadata says F32 [\(p.count)]")
                    }
                }
            }
        }

        deinit { for h in handles.values { try? h.close() } }

        /// Reads elements [lo, hi) of `piece` (relative to the piece's start) into `dst`.
        public func read(_ piece: CheckpointPiece, from lo: Int, to hi: Int, into dst: UnsafeMutablePointer<Float>) throws {
            guard let r = readers[piece.file] else { throw CheckpointError(path: Checkpoint.join(stepFolder, piece.file), "not opened") }
            let info = try r.info(piece.tensor)
            let h: FileHandle
            if let cached = handles[piece.file] { h = cached } else {
                guard let opened = FileHandle(forReadingAtPath: r.path) else { throw CheckpointError(path: r.path, "cannot open for reading") }
                handles[piece.file] = opened
                h = opened
            }
            let byteOffset = r.header.dataStart + info.dataOffsets.lowerBound + lo * 4
            let byteCount = (hi - lo) * 4
            guard byteCount > 0 else { return }
            let data: Data
            do {
                try h.seek(toOffset: UInt64(byteOffset))
                data = try h.read(upToCount: byteCount) ?? Data()
            } catch {
                throw CheckpointError(path: r.path, "read of \(byteCount) bytes at \(byteOffset) failed: \(error)")
            }
            guard data.count == byteCount else {
                throw CheckpointError(path: r.path, "truncated: expected \(byteCount) bytes at offset \(byteOffset), got \(data.count)")
            }
            data.withUnsafeBytes { raw in
                let out = UnsafeMutableRawPointer(dst)
                out.copyMemory(from: raw.baseAddress!, byteCount: byteCount)
            }
            #if _endian(big)
            for i in 0..<(hi - lo) { dst[i] = Float(bitPattern: UInt32(littleEndian: dst[i].bitPattern)) }
            #endif
        }

        /// Fills `dst` with elements [start, start+count) of the flattened entry, from whichever pieces overlap.
        public func readRange(_ entry: CheckpointEntry, key: String, start: Int, count: Int, into dst: UnsafeMutablePointer<Float>) throws {
            var covered = 0
            for p in entry.pieces {
                let lo = max(start, p.offset), hi = min(start + count, p.offset + p.count)
                guard hi > lo else { continue }
                try read(p, from: lo - p.offset, to: hi - p.offset, into: dst + (lo - start))
                covered += hi - lo
            }
            guard covered == count else {
                throw CheckpointError(path: stepFolder, "'\(key)': pieces cover \(covered) of the \(count) elements at \(start)")
            }
        }
    }

    // MARK: save

    /// Syncs a file or folder to disk (folders: so that a rename in them is durable).
    static func fsyncPath(_ path: String) {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { return }
        _ = fsync(fd)
        close(fd)
    }

    static func writeDurably(_ data: Data, to path: String) throws {
        let tmp = path + ".tmp-\(getpid())"
        guard FileManager.default.createFile(atPath: tmp, contents: data) else {
            throw CheckpointError(path: tmp, "cannot write")
        }
        fsyncPath(tmp)
        if rename(tmp, path) != 0 {
            let e = errno
            try? FileManager.default.removeItem(atPath: tmp)
            throw CheckpointError(path: path, "cannot rename \(tmp) into place: \(String(cString: strerror(e)))")
        }
    }

    static func sanitized(_ s: String) -> String {
        String(s.map { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" ? $0 : "_" })
    }

    /// Saves this rank's part of the checkpoint of `step`: its `pieces` when it is a writer (one replica writes), and
    /// on rank 0 the `buffers`. Collective over `world`: every rank must call it. Returns the step folder.
    @discardableResult
    public static func save(folder: String, step: Int, pieces: [StatePiece], buffers: [ModelBuffer], isWriter: Bool,
                            world: ProcessGroup, jobID: String, modelArgs: ModelArgs, topology: CheckpointTopology,
                            dataloader: DataLoaderState? = nil, keepLatestK: Int, log: (String) -> Void) throws -> String {
        let rank = world.members[world.rank]
        let fm = FileManager.default
        let tmp = join(folder, stepFolderName(step) + ".tmp-" + sanitized(jobID))
        let final = join(folder, stepFolderName(step))
        if rank == 0 {
            // A leftover of an earlier attempt with the same job id (e.g. single-process runs) must not leak files.
            if fm.fileExists(atPath: tmp) { try? fm.removeItem(atPath: tmp) }
            do {
                try fm.createDirectory(atPath: tmp, withIntermediateDirectories: true)
            } catch {
                throw CheckpointError(path: tmp, "cannot create the temporary checkpoint folder: \(error)")
            }
        }
        try world.barrier()
        let file = rankFileName(rank)
        var entries: [String: CheckpointEntry] = [:]   // this rank's pieces, by key
        var bufferEntries: [String: CheckpointEntry] = [:]
        if isWriter {
            var sd: StateDict = [:]
            for p in pieces {
                sd[p.tensorName] = HostTensor(shape: [p.count], values: Array(UnsafeBufferPointer(start: p.values, count: p.count)))
                entries[p.key, default: CheckpointEntry(shape: p.shape, pieces: [])].pieces
                    .append(CheckpointPiece(file: file, tensor: p.tensorName, offset: p.offset, count: p.count))
            }
            if rank == 0 {
                for b in buffers {
                    let name = "buffer/" + b.fqn
                    sd[name] = HostTensor(shape: b.tensor.shape, values: b.tensor.toArray())
                    bufferEntries[b.fqn] = CheckpointEntry(shape: b.tensor.shape, pieces: [CheckpointPiece(file: file, tensor: name, offset: 0, count: b.tensor.count)])
                }
            }
            let path = join(tmp, file)
            do {
                try SafeTensors.write(sd, to: path, metadata: ["format": "swifttitan-dcp", "step": String(step), "rank": String(rank)])
            } catch {
                throw CheckpointError(path: path, "cannot write: \(error)")
            }
        }
        crashIfRequested(.rankFile, rank: rank, step: step)
        // Rank 0 learns every writer's pieces (the all-gather also waits for every rank file).
        let written = try world.allGatherBytes(isWriter ? Array(try JSONEncoder().encode(entries)) : [])
        if rank == 0 {
            var meta = CheckpointMetadata(
                format: CheckpointMetadata.formatName, format_version: CheckpointMetadata.currentFormatVersion,
                step: step, dataloader_position: step, dataloader: dataloader, lr_scheduler_step: step,
                rng: "none (training draws no random numbers after initialisation)",
                model_args: modelArgs, topology: topology, job_id: jobID, files: [], state: [:], buffers: bufferEntries)
            for (r, blob) in written.enumerated() where !blob.isEmpty {
                meta.files.append(rankFileName(world.members[r]))
                for (key, e) in try JSONDecoder().decode([String: CheckpointEntry].self, from: Data(blob)) {
                    meta.state[key, default: CheckpointEntry(shape: e.shape, pieces: [])].pieces += e.pieces
                }
            }
            for k in meta.state.keys { meta.state[k]!.pieces.sort { $0.offset < $1.offset } }
            try validateCoverage(meta, path: join(tmp, metadataFileName))
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            try writeDurably(try encoder.encode(meta), to: join(tmp, metadataFileName))
            fsyncPath(tmp)
            crashIfRequested(.metadata, rank: rank, step: step)
            // A re-run of the same step: move the old folder aside first, so a good step-N exists at every moment.
            let replaced = final + ".old-" + sanitized(jobID)
            if fm.fileExists(atPath: final), rename(final, replaced) != 0 {
                throw CheckpointError(path: final, "cannot move the previous save aside: \(String(cString: strerror(errno)))")
            }
            if rename(tmp, final) != 0 {
                throw CheckpointError(path: final, "cannot rename \(tmp) to it: \(String(cString: strerror(errno)))")
            }
            try? fm.removeItem(atPath: replaced)
            fsyncPath(folder)
            crashIfRequested(.renamed, rank: rank, step: step)
            try writeDurably(Data((stepFolderName(step) + "\n").utf8), to: join(folder, latestFileName))
            fsyncPath(folder)
            prune(folder: folder, keepLatestK: keepLatestK, current: step, log: log)
            log("checkpoint: saved step \(step) to \(final)")
        }
        try world.barrier()
        return final
    }

    /// Removes stale temporary folders and all but the newest `keepLatestK` step folders up to the one
    /// just saved (0 keeps all); the current step is never removed, and folders of later steps (left by an
    /// abandoned run) are left alone. Only called by rank 0 after a complete save, when no rank of this
    /// job is writing; one job writes to a checkpoint folder at a time.
    static func prune(folder: String, keepLatestK: Int, current: Int, log: (String) -> Void) {
        let fm = FileManager.default
        guard let names = try? fm.contentsOfDirectory(atPath: folder) else { return }
        for n in names where n.hasPrefix("step-") && (n.contains(".tmp-") || n.contains(".old-")) {
            try? fm.removeItem(atPath: join(folder, n))
        }
        guard keepLatestK > 0 else { return }
        let older = names.compactMap { n in stepNumber(n).map { ($0, n) } }.filter { $0.0 < current }.sorted { $0.0 > $1.0 }
        for (_, n) in older.dropFirst(keepLatestK - 1) {
            try? fm.removeItem(atPath: join(folder, n))
            log("checkpoint: pruned \(n) (keep_latest_k \(keepLatestK))")
        }
    }

    /// Where a save can be interrupted by the test hook (see the top of this file).
    enum CrashPoint: String { case rankFile = "rank-file", metadata, renamed }

    static func crashIfRequested(_ point: CrashPoint, rank: Int, step: Int) {
        let environment = ProcessInfo.processInfo.environment
        // A restarted job (the launcher's TITAN_RESTART_COUNT) saves undisturbed, like an injected fault.
        guard let spec = environment[crashEnvironmentVariable], (environment["TITAN_RESTART_COUNT"] ?? "0") == "0" else { return }
        let parts = spec.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 2 || parts.count == 3, Int(parts[0]) == rank, Int(parts[1]) == step,
              (parts.count == 2 ? CrashPoint.rankFile : CrashPoint(rawValue: parts[2])) == point else { return }
        FileHandle.standardError.write(Data("\(crashEnvironmentVariable)=\(spec): rank \(rank) kills itself while saving step \(step)\n".utf8))
        kill(getpid(), SIGKILL)
    }

    // MARK: load

    /// Validates a checkpoint against the run (`expected`: every state key with its full shape) and fills each of
    /// this rank's `pieces` with the overlapping byte ranges of the saved pieces, and `buffers` (zero where the
    /// checkpoint has none; nil: buffers are not loaded). Every rank; no collective. A failure changes nothing.
    public static func load(stepFolder: String, pieces: [StatePiece], buffers: [ModelBuffer]?, expected: [String: [Int]],
                            modelArgs: ModelArgs) throws -> CheckpointMetadata {
        let meta = try readMetadata(stepFolder: stepFolder)
        let metaPath = join(stepFolder, metadataFileName)
        let bufferShapes = Dictionary((buffers ?? []).map { ($0.fqn, $0.tensor.shape) }, uniquingKeysWith: { a, _ in a })
        try validateModel(meta, expected: expected, bufferShapes: bufferShapes, args: modelArgs, path: metaPath)
        try validateCoverage(meta, path: metaPath)
        let reader = try PieceReader(stepFolder: stepFolder, meta: meta)
        // Read everything first, then commit: a failure leaves the state untouched.
        var staged: [(dst: UnsafeMutablePointer<Float>, values: [Float])] = []
        for p in pieces {
            var values = [Float](repeating: 0, count: p.count)
            try values.withUnsafeMutableBufferPointer {
                try reader.readRange(meta.state[p.key]!, key: p.key, start: p.offset, count: p.count, into: $0.baseAddress!)
            }
            staged.append((p.values, values))
        }
        for b in buffers ?? [] {
            var values = [Float](repeating: 0, count: b.tensor.count)
            if let e = meta.buffers[b.fqn] {
                try values.withUnsafeMutableBufferPointer {
                    try reader.readRange(e, key: b.fqn, start: 0, count: b.tensor.count, into: $0.baseAddress!)
                }
            }
            staged.append((b.tensor.data, values))
        }
        for (dst, values) in staged { values.withUnsafeBufferPointer { dst.update(from: $0.baseAddress!, count: values.count) } }
        return meta
    }

    // MARK: one-process assembly (titan convert)

    /// Every parameter (full tensors) and buffer of a checkpoint, read in one process; with the model args.
    public static func assembleFull(stepFolder: String) throws -> (meta: CheckpointMetadata, stateDict: StateDict) {
        let meta = try readMetadata(stepFolder: stepFolder)
        let metaPath = join(stepFolder, metadataFileName)
        try validateCoverage(meta, path: metaPath)
        let reader = try PieceReader(stepFolder: stepFolder, meta: meta)
        var sd: StateDict = [:]
        let prefix = "model/"
        for (key, e) in meta.state where key.hasPrefix(prefix) {
            var values = [Float](repeating: 0, count: e.numel)
            try values.withUnsafeMutableBufferPointer {
                try reader.readRange(e, key: key, start: 0, count: e.numel, into: $0.baseAddress!)
            }
            sd[String(key.dropFirst(prefix.count))] = HostTensor(shape: e.shape, values: values)
        }
        for (fqn, e) in meta.buffers {
            var values = [Float](repeating: 0, count: e.numel)
            try values.withUnsafeMutableBufferPointer {
                try reader.readRange(e, key: fqn, start: 0, count: e.numel, into: $0.baseAddress!)
            }
            sd[fqn] = HostTensor(shape: e.shape, values: values)
        }
        // The model's own check: every parameter present with the args' shapes.
        let expected = try meta.model_args.spec().parameterShapes
        let missing = expected.keys.filter { sd[$0] == nil }.sorted()
        if !missing.isEmpty {
            throw CheckpointError(path: metaPath, "lacks parameters of its own model_args: \(missing.prefix(5).joined(separator: ", "))")
        }
        return (meta, sd)
    }

    /// Writes an HF folder (config.json + model.safetensors) from a distributed checkpoint.
    public static func exportHF(stepFolder: String, to hfFolder: String) throws -> CheckpointMetadata {
        let (meta, sd) = try assembleFull(stepFolder: stepFolder)
        try HFCheckpoint.save(model: meta.model_args, stateDict: sd, folder: hfFolder)
        return meta
    }

    /// HF export folder of the last save: checkpoint.folder/step-N-hf.
    public static func hfExportFolder(folder: String, step: Int) -> String { join(folder, stepFolderName(step) + "-hf") }
}
