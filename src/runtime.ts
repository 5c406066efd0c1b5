/**
 * How Node runs the compiled start (`npm start`, `.ci/production-start`, and the tests and benchmarks that spawn
 * dist/main.js): source maps for stack traces, and a cap on V8's old space. The cap is what keeps a PostgreSQL +
 * Redis process under SPEC 8's 200 MB: without it V8 lets the old space grow to about 120 MB of mostly garbage
 * between collections (RSS peaks of 215–225 MB under the sustained mix); with it, V8 collects sooner and the old
 * space stays near the live set (about 40 MB), at no measured cost in throughput (docs/BENCHMARKS.md, memory).
 * package.json's start script repeats these flags; test/unit/runtime.test.ts keeps the two equal.
 */
export const HEAP_CAP_MB = 128;
export const NODE_FLAGS = ['--enable-source-maps', `--max-old-space-size=${HEAP_CAP_MB}`] as const;
