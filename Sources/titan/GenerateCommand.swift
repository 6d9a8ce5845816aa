import ArgumentParser
import Foundation
import Model
import Runtime
import Tensor
import Train

/// `titan generate`: continue a prompt with a model loaded as training loads it (one process, one rank). Streams the
/// text when a tokenizer is known, then prints one JSON line per sample: {"prompt_ids", "new_ids", "tokens_per_sec", ...}.
struct GenerateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "generate",
        abstract: "Generate from a model: --checkpoint.initial_load_path DIR [--checkpoint.initial_load_in_hf true], --generate.prompt_ids 1,2,3 or --generate.prompt TEXT, --generate.* (see titan generate --help).",
        helpNames: [])

    @Argument(parsing: .captureForPassthrough, help: "Config selection and overrides, torchtitan style.")
    var arguments: [String] = []

    func run() throws {
        do {
            let config: JobConfig
            switch try JobConfig.resolve(arguments: arguments) {
            case .help(let text):
                print(text.replacingOccurrences(of: "usage: titan train", with: "usage: titan generate"))
                return
            case .run(let c): config = c
            }
            try Self.generate(config)
        } catch {
            FileHandle.standardError.write(Data("titan generate: \(error)\n".utf8))
            throw ExitCode(2)
        }
    }

    static func generate(_ config: JobConfig) throws {
        let g = config.generate
        let log: (String) -> Void = { FileHandle.standardError.write(Data("titan generate: \($0)\n".utf8)) }
        // Text is streamed only when the ids have a known meaning: a tokenizer.json was given, or the prompt is text.
        let tokenizer = try loadTokenizer(path: config.dataloader.tokenizer_path)
        let streamsText = config.dataloader.tokenizer_path != nil || g.prompt != nil
        let model = try GenerationWeights.load(config, log: log)
        let prompt = try g.promptTokens(tokenizer: tokenizer, vocabSize: model.vocabSize, maxSeqLen: model.maxSeqLen)
        // The byte tokenizer's EOS counts only for an HF tokenizer: a model trained on synthetic tokens may emit 257.
        let hfFolder = config.checkpoint.initial_load_in_hf ? config.checkpoint.initial_load_path : nil
        let stopIDs = try g.stopIDs(modelEOS: try hfFolder.map(HFModelConfig.eosTokenIDs(folder:)) ?? [],
                                    tokenizerEOS: config.dataloader.tokenizer_path != nil ? tokenizer.eosID : nil,
                                    vocabSize: model.vocabSize)
        if !config.debug.deterministic { BLAS.splitOnKernelThreads() }
        BLAS.prepare()   // the GEMM libraries' one-time set-up, before the prefill is timed
        log("\(prompt.count) prompt tokens, \(g.max_new_tokens) new, " + (g.sampling.isGreedy ? "greedy" :
            "temperature \(g.temperature), top_k \(g.top_k), top_p \(g.top_p), seed \(g.seed)")
            + ", \(g.num_samples) sample(s), " + (g.kv_cache ? "KV cache" : "no KV cache") + ", \(KernelThreads.count) kernel thread(s)"
            + (stopIDs.isEmpty ? "" : ", stopping at token(s) \(stopIDs.sorted().map(String.init).joined(separator: ","))"))

        var streamer: TextStreamer?
        var current = -1
        let out = FileHandle.standardOutput
        let results = Generator(model: model).generate(
            prompt: prompt, maxNewTokens: g.max_new_tokens, sampling: g.sampling, seed: g.seed, numSamples: g.num_samples,
            kvCache: g.kv_cache, stopIDs: stopIDs
        ) { sample, token in
            guard streamsText else { return }
            if sample != current {
                if var s = streamer { out.write(Data((s.finish() + "\n").utf8)) }
                current = sample
                streamer = TextStreamer(tokenizer: tokenizer)
                out.write(Data(tokenizer.decode(prompt).utf8))
            }
            let piece = streamer!.add(token)
            if !piece.isEmpty { out.write(Data(piece.utf8)) }
        }
        if var s = streamer { out.write(Data((s.finish() + "\n").utf8)) }
        for r in results { out.write(Data((r.jsonLine + "\n").utf8)) }
    }
}
