// `npm run bench [name]`: every benchmark (or one), each comparing Kiln with its baseline in the same run; results
// in docs/BENCHMARKS.md. The idempotency, credits and submit-to-start benchmarks need PostgreSQL and Redis
// (DATABASE_URL / REDIS_URL, defaulting to the local ones).
import { benchAnalytics } from './analytics';
import { benchCredits } from './credits';
import { benchHealthz } from './healthz';
import { benchIdempotency } from './idempotency';
import { benchKeyedWrites } from './keyed-writes';
import { benchMemory } from './memory';
import { benchMetricsScrape } from './metrics-scrape';
import { benchScale } from './scale';
import { benchSignedGet } from './signed-get';
import { benchSignedGetBuild } from './signed-get-build';
import { benchStartup } from './startup';
import { benchSubmitToStart } from './submit-to-start';
import { benchWebhooks } from './webhooks';

const benches: Record<string, () => Promise<void>> = {
  healthz: benchHealthz,
  'signed-get': benchSignedGet,
  'signed-get-build': benchSignedGetBuild,
  idempotency: benchIdempotency,
  credits: benchCredits,
  'keyed-writes': benchKeyedWrites,
  'submit-to-start': benchSubmitToStart,
  'metrics-scrape': benchMetricsScrape,
  analytics: benchAnalytics,
  webhooks: benchWebhooks,
  memory: benchMemory,
  startup: benchStartup,
  scale: benchScale,
};
const only = process.argv[2];
if (only && !benches[only]) {
  process.stderr.write(`unknown benchmark "${only}"; one of: ${Object.keys(benches).join(', ')}\n`);
  process.exit(2);
}
for (const [name, run] of Object.entries(benches)) {
  if (only && only !== name) continue;
  process.stdout.write(`\n== ${name}\n`);
  await run();
}
