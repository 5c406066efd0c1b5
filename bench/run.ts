// `npm run bench`: every benchmark, each comparing Kiln with its baseline in the same run; results in docs/BENCHMARKS.md.
import { benchHealthz } from './healthz';
import { benchSignedGet } from './signed-get';

const only = process.argv[2];
const benches: Record<string, () => Promise<void>> = { healthz: benchHealthz, 'signed-get': benchSignedGet };
for (const [name, run] of Object.entries(benches)) {
  if (only && only !== name) continue;
  process.stdout.write(`\n== ${name}\n`);
  await run();
}
