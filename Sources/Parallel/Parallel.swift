// Parallel target
