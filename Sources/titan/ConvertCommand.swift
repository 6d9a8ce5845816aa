import ArgumentParser
import Foundation
import Train

/// `titan convert`: a distributed checkpoint (any topology) → an HF folder (config.json + model.safetensors)
/// that transformers loads as Qwen3MoeForCausalLM / Qwen3ForCausalLM / DeepseekV3ForCausalLM. One process, no ranks.
struct ConvertCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "convert",
        abstract: "Convert a distributed checkpoint (a step-N folder, or a checkpoint folder: its latest) to an HF folder.")

    @Option(name: .long, help: "Checkpoint step folder (DUMP/checkpoint/step-N) or checkpoint folder (uses its latest marker).")
    var from: String

    @Option(name: .long, help: "Output HF folder (created; config.json and model.safetensors are overwritten).")
    var to: String

    func run() throws {
        do {
            let step = try Checkpoint.resolveStepFolder(from)
            let meta = try Checkpoint.exportHF(stepFolder: step, to: to)
            print("titan convert: \(step) (step \(meta.step), saved on \(meta.topology.world_size) ranks) -> \(to)")
        } catch {
            FileHandle.standardError.write(Data("titan convert: \(error)\n".utf8))
            throw ExitCode(2)
        }
    }
}
