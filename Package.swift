// swift-tools-version:6.0
import PackageDescription

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
        .systemLibrary(name: "COpenBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),

        // Layers, bottom up: transport/collectives, tensors, model, parallelism, training.
        .target(name: "Collectives", dependencies: ["CZeroMQ"]),
        .target(name: "Cluster", dependencies: ["Collectives", "Config", "TOMLKit"]),
        .target(name: "Tensor", dependencies: ["COpenBLAS"]),
        .target(name: "Config"),
        .target(name: "Model", dependencies: ["Tensor"]),
        .target(name: "Parallel", dependencies: ["Collectives", "Tensor", "Model"]),
        .target(name: "Train", dependencies: ["Collectives", "Tensor", "Model", "Parallel", "Config"]),
        .executableTarget(name: "titan", dependencies: [
            "Collectives", "Cluster", "Tensor", "Model", "Parallel", "Train", "Config",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),

        .testTarget(name: "CollectivesTests", dependencies: ["Collectives", "Cluster"]),
        .testTarget(name: "ClusterTests", dependencies: ["Cluster", "Collectives"]),
        .testTarget(name: "TensorTests", dependencies: ["Tensor"]),
        .testTarget(name: "ModelTests", dependencies: ["Model", "Tensor"],
                    resources: [.copy("Fixtures")]),
        .testTarget(name: "TrainTests", dependencies: ["Train", "Config", "Model", "Tensor"]),
        .testTarget(name: "ParallelTests", dependencies: ["Parallel", "Collectives", "Model", "Tensor"]),
        // Real rank processes started through the titan binary, as users start them.
        .testTarget(name: "EndToEndTests"),
    ],
    swiftLanguageModes: [.v5]
)
