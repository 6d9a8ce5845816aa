// swift-tools-version:6.0
import PackageDescription
import Foundation

// The kernels' SIMD8<Float> code is written for 256-bit vectors: build it for AVX2 + FMA (`-target-cpu haswell`) when
// the build machine has them, as every x86 server since 2015 does (OpenBLAS picks its Haswell kernels there too).
// Elsewhere, or with TITAN_TARGET_CPU=<cpu> (e.g. x86-64 for a portable binary), that CPU is used instead.
let targetCPU: String? = {
    if let cpu = ProcessInfo.processInfo.environment["TITAN_TARGET_CPU"], !cpu.isEmpty { return cpu }
    #if arch(x86_64) && os(Linux)
    guard let info = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
          let flags = info.split(separator: "\n").first(where: { $0.hasPrefix("flags") })?.split(separator: " ")
    else { return nil }
    return ["avx2", "fma", "bmi2", "f16c"].allSatisfy { flags.contains(Substring($0)) } ? "haswell" : nil
    #else
    return nil
    #endif
}()
let kernelSettings: [SwiftSetting] = targetCPU.map { [.unsafeFlags(["-target-cpu", $0])] } ?? []

let package = Package(
    name: "SwiftTitan",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "titan", targets: ["titan"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
    ],
    targets: [
        // System libraries, found through pkg-config.
        .systemLibrary(name: "CZeroMQ", pkgConfig: "libzmq", providers: [.apt(["libzmq3-dev"])]),
        // libsodium, which libzmq's CURVE is built on (so it is linked already): the job secret's CSPRNG and the key
        // derivation of every rank's CURVE keypair (Sources/Collectives/Transport/CurveKeys.swift).
        .systemLibrary(name: "CSodium", pkgConfig: "libsodium", providers: [.apt(["libsodium-dev"])]),
        .systemLibrary(name: "COpenBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CBLIS", providers: [.apt(["libblis-dev"])]),
        // Linux calls the Glibc module does not declare (CPU affinity, mallopt, which library defines a symbol), and the
        // board and helper thread of idle-CPU lending (shared memory and thread affinity), the simulated network's shared links.
        .target(name: "CLinux"),
        // GEMM kernels: small fp32 GEMMs with AVX-512 (attention's blocks), bfloat16 GEMMs on AMX or AVX512_BF16, and
        // the bfloat16 conversions; compiled per function for those instructions and used where the CPU has them.
        .target(name: "CKernels"),

        // Layers, bottom up: the runtime (kernel threads, idle-CPU lending, observers of collectives: blocked time, trace),
        // transport/collectives, tensors, model, parallelism, training.
        .target(name: "Runtime", dependencies: ["CLinux"], swiftSettings: kernelSettings),
        .target(name: "Collectives", dependencies: ["CZeroMQ", "CSodium", "CKernels", "CLinux", "Runtime"], swiftSettings: kernelSettings),
        .target(name: "Cluster", dependencies: ["Collectives", "Config", "Parallel", "TOMLKit", "CLinux"]),
        .target(name: "Tensor", dependencies: ["COpenBLAS", "CBLIS", "CLinux", "CKernels", "Runtime"], swiftSettings: kernelSettings),
        .target(name: "Config"),
        .target(name: "Model", dependencies: ["Tensor", "Runtime", "Config"], swiftSettings: kernelSettings),
        .target(name: "Parallel", dependencies: ["Collectives", "Tensor", "Model", "Runtime", "Config"], swiftSettings: kernelSettings),
        .target(name: "Train", dependencies: ["Collectives", "Tensor", "Model", "Parallel", "Config", "CLinux", "Runtime"], swiftSettings: kernelSettings),
        .executableTarget(name: "titan", dependencies: [
            "Collectives", "Cluster", "Tensor", "Model", "Parallel", "Train", "Config", "Runtime", "CLinux",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),

        .testTarget(name: "CollectivesTests", dependencies: ["Collectives", "Cluster", "CZeroMQ", "CSodium"]),
        .testTarget(name: "ClusterTests", dependencies: ["Cluster", "Collectives", "Parallel"]),
        .testTarget(name: "TensorTests", dependencies: ["Tensor", "CLinux", "Runtime"]),
        .testTarget(name: "ModelTests", dependencies: ["Model", "Tensor", "Runtime"],
                    resources: [.copy("Fixtures")]),
        .testTarget(name: "TrainTests", dependencies: ["Train", "Config", "Model", "Tensor"], resources: [.copy("Fixtures")]),
        .testTarget(name: "ParallelTests", dependencies: ["Parallel", "Collectives", "Model", "Tensor"]),
        // Real rank processes started through the titan binary, as users start them (Cluster reads their flight records).
        .testTarget(name: "EndToEndTests", dependencies: ["Cluster", "Collectives", "CZeroMQ", "Train"]),
    ],
    swiftLanguageModes: [.v5]
)
