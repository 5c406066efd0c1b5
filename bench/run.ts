// `npm run bench`: every benchmark, each comparing Kiln with its baseline in the same run; results in docs/BENCHMARKS.md.
import { benchHealthz } from './healthz';

const only = process.argv[2];
const benches: Record<string, () => Promise<void>> = { healthz: benchHealthz };
for (const [name, run] of Object.entries(benches)) {
  if (only && only !== name) continue;
  process.stdout.write(`\n== ${name}\n`);
  await run();
}
