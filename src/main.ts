import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { hostname } from 'node:os';
import { join, resolve } from 'node:path';
import { getHeapStatistics } from 'node:v8';
import { ConfigError, loadConfig } from './config';
import { DeliveryWorker } from './delivery/worker';
import { buildApp } from './http/server';
import { createLogger } from './log';
import { countRunningBuildsWith } from './metrics';
import { rootPath } from './paths';
import { CommandExecutor } from './runner/executors/command';
import { Runner } from './runner/runner';
import { HEAP_CAP_MB, NODE_FLAGS } from './runtime';
import { resolveHmacSecrets } from './secrets';
import { startAnalyticsFolder } from './services/analytics';
import { startCreditAuditor } from './services/credit-auditor';
import { startCreditSweeper } from './services/credit-sweeper';
import { startInstanceLine } from './services/instances';
import { startMaintenance } from './services/maintenance';
import { startRetention } from './services/retention';
import { deploymentId, recordedV1Retirement, settleV1Retirement } from './services/settings';
import { startStep } from './startup';
import { BuildSignals } from './store/signals';
import { describeStores, openDatabase, openStore } from './stores';
import { VERSION } from './version';

/** The bundled sample command, run when BUILD_COMMAND is not set. */
const SAMPLE_BUILD_COMMAND = `"${process.execPath}" "${rootPath('scripts', 'sample-build.mjs')}"`;

/**
 * What a failed start must close before the process exits: the embedded database's directory lock above all, so
 * that the next start does not find one left behind. Steps push their closers as they open things.
 */
const openedAtStart: (() => Promise<unknown>)[] = [];

/** Start-up and shutdown only: read config, open stores, start the server, close in order. */
async function main(): Promise<void> {
  let config: ReturnType<typeof loadConfig>;
  let resolved: Awaited<ReturnType<typeof resolveHmacSecrets>>;
  try {
    config = loadConfig(process.env);
    resolved = await resolveHmacSecrets(config.hmacSecrets, config.dataDir, config.databaseUrl !== undefined);
  } catch (error) {
    if (error instanceof ConfigError) {
      process.stderr.write(`kiln: bad configuration — ${error.message}\n`);
      process.exit(2);
    }
    throw error;
  }
  const format = config.logFormat === 'auto' ? (process.stdout.isTTY ? 'pretty' : 'json') : config.logFormat;
  const logger = createLogger(config.logLevel, format);
  const exit = (code: number) => logger.flush(() => process.exit(code));
  const { secrets, file, generated } = resolved;
  if (generated) {
    logger.info(
      { file },
      `generated a new HMAC secret and saved it in ${file} (mode 0600, the secret alone, no newline): sign requests with it, e.g. \`npx kiln sign GET /v1/ping\`, or set HMAC_SECRET to choose your own`,
    );
  } else if (file) logger.info({ file }, `using the HMAC secret saved in ${file} (set HMAC_SECRET to choose one)`);
  config = { ...config, hmacSecrets: secrets };

  const pgdata = resolve(join(config.dataDir, 'pgdata'));
  if (!config.databaseUrl && !existsSync(pgdata)) {
    logger.info(
      { dataDir: pgdata },
      `first start: initialising the embedded database in ${pgdata}; this takes a while (up to a minute on a slow machine), once`,
    );
  }
  const dbUrl = config.databaseUrl;
  const db = await startStep(dbUrl ? { kind: 'postgres', url: dbUrl } : { kind: 'embedded', dataDir: pgdata }, () =>
    openDatabase(config),
  );
  openedAtStart.push(() => db.close());
  // Background work has its own connections (PostgreSQL): requests holding all of theirs never starve it.
  const background = db.background;
  const retirement = await settleV1Retirement(db, config.hmacV1Until, Date.now());
  if (retirement.until && retirement.until.getTime() <= Date.now() && config.hmacMode === 'v1') {
    throw new Error(
      `HMAC_MODE=v1, but v1 signatures were retired at ${retirement.until.toISOString()} (recorded in kiln_settings, so a restart never reopens them): set HMAC_MODE=v2 or dual. To reopen v1 deliberately, delete that row: delete from kiln_settings where name = 'hmac_v1_until'.`,
    );
  }
  if (retirement.recorded) {
    logger.info(
      { hmacV1Until: retirement.recorded.toISOString() },
      'v1 signature retirement recorded in the database is in force (HMAC_V1_UNTIL can only move it earlier once passed)',
    );
  }
  config = { ...config, hmacV1Until: retirement.until };
  const redisUrl = config.redisUrl;
  const openingStore = openStore(config, db, {
    deploymentId: await deploymentId(db),
    warn: (message) => logger.warn(message),
    onListenConnection: (channel, event) => {
      if (event.state === 'lost') {
        logger.warn(
          { channel, error: event.error },
          'LISTEN connection lost; reconnecting (wake-ups wait for the slow poll meanwhile)',
        );
      } else logger.info({ channel, attempt: event.attempt }, 'LISTEN connection restored');
    },
  });
  const store = redisUrl ? await startStep({ kind: 'redis', url: redisUrl }, () => openingStore) : await openingStore;
  openedAtStart.push(() => store.close());
  const instanceId = `kiln_${hostname()}_${process.pid}_${randomBytes(3).toString('hex')}`;
  // A v1 retirement another process recorded applies here too, without a restart.
  const retirementPoll = setInterval(() => {
    recordedV1Retirement(background)
      .then((recorded) => {
        const current = config.hmacV1Until;
        if (recorded && (!current || recorded.getTime() < current.getTime())) config.hmacV1Until = recorded;
      })
      .catch((error) => logger.warn({ err: error }, 'could not read the recorded v1 retirement'));
  }, 15_000);
  retirementPoll.unref();
  openedAtStart.push(async () => clearInterval(retirementPoll));

  const stopMaintenance = startMaintenance(background, store, logger);
  const signals = new BuildSignals(store, logger);
  const runner = new Runner({
    db: background,
    signals,
    logger,
    owner: instanceId,
    executor:
      config.buildExecutor === 'command' ? new CommandExecutor(config.buildCommand ?? SAMPLE_BUILD_COMMAND) : null,
    concurrency: config.runnerConcurrency,
    leaseSeconds: config.buildLeaseS,
    timeoutSeconds: config.buildTimeoutS,
    dataDir: config.dataDir,
    creditsPerMinute: config.creditsPerBuildMinute,
    reservationTtlS: config.reservationTtlS,
    previewMaxBytes: config.previewMaxMb * 1_048_576,
  });
  countRunningBuildsWith(() => runner.activeBuilds);
  const stopInstanceLine = await startInstanceLine({
    db: background,
    logger,
    id: instanceId,
    hostname: hostname(),
    pid: process.pid,
    version: VERSION,
    leaseSeconds: config.instanceLeaseS,
    store: () => store.ping(),
    buildsRunning: () => runner.activeBuilds,
    runnerConcurrency: config.runnerConcurrency,
  });
  openedAtStart.push(stopInstanceLine);
  const stopRetention = startRetention(
    background,
    {
      dataDir: config.dataDir,
      workspaceDays: config.retentionWorkspaceDays,
      previewDays: config.retentionPreviewDays,
      eventDays: config.retentionEventDays,
      webhookDays: config.retentionWebhookDays,
    },
    logger,
    config.retentionIntervalS * 1000,
  );
  const stopCreditSweeper = startCreditSweeper(background, logger, config.creditSweepIntervalS * 1000);
  const stopAnalyticsFolder =
    config.analyticsFoldIntervalS > 0
      ? startAnalyticsFolder(background, logger, config.analyticsFoldIntervalS * 1000)
      : () => {};
  const stopCreditAuditor =
    config.creditAuditIntervalS > 0 ? startCreditAuditor(background, logger, config.creditAuditIntervalS) : () => {};
  openedAtStart.push(async () => {
    stopMaintenance();
    stopCreditSweeper();
    stopCreditAuditor();
    stopAnalyticsFolder();
    stopRetention();
  });
  const app = await buildApp({ config, db, store, logger, version: VERSION, signals });
  openedAtStart.push(() => app.close());
  const address = await startStep({ kind: 'listen', host: config.host, port: config.port }, () =>
    app.listen({ port: config.port, host: config.host }),
  );
  await runner.start();
  const deliveries = new DeliveryWorker({
    db: background,
    signals,
    logger,
    concurrency: config.webhookConcurrency,
    timeoutS: config.webhookTimeoutS,
    retryScheduleS: config.webhookRetryScheduleS,
    disableAfterS: config.webhookDisableAfterS,
    allowHttp: config.webhookAllowHttp,
    allowedNetworks: config.webhookAllowedNetworks,
  });
  await deliveries.start();
  logger.info(
    { url: address, version: VERSION, instanceId },
    `Kiln listening on ${address} — ${describeStores(config)}`,
  );
  const heapLimitMb = Math.round(getHeapStatistics().heap_size_limit / 1_048_576);
  if (config.databaseUrl && heapLimitMb > 4 * HEAP_CAP_MB) {
    logger.warn(
      { heapLimitMb },
      `V8's heap is not capped (${heapLimitMb} MB): under load its old space grows with garbage and RSS peaks above 200 MB. Start Kiln as npm start does: node ${NODE_FLAGS.join(' ')} dist/main.js`,
    );
  }
  logger.info(`Try it: npm run demo (a project and a build through the signed API, its events live, its preview)`);
  if (!config.metricsToken && !/^(127\.|::1$|localhost$)/.test(config.host)) {
    logger.warn(
      { host: config.host },
      'METRICS_TOKEN is not set and Kiln listens beyond this host: /metrics and the live page’s data (/dashboard/data: build, project and user ids, build messages) are open to anyone who reaches it. Set METRICS_TOKEN.',
    );
  }

  let stopping = false;
  const shutdown = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, `${signal} received: finishing in-flight requests (up to ${config.shutdownTimeoutS} s)`);
    const force = setTimeout(() => {
      logger.error('in-flight requests did not finish in time; exiting anyway');
      exit(1);
    }, config.shutdownTimeoutS * 1000);
    force.unref();
    await Promise.all([
      app.close(),
      runner.stop((config.shutdownTimeoutS - 1) * 1000),
      deliveries.stop((config.shutdownTimeoutS - 1) * 1000),
    ]);
    await signals.close();
    clearInterval(retirementPoll);
    stopMaintenance();
    stopCreditSweeper();
    stopCreditAuditor();
    stopAnalyticsFolder();
    stopRetention();
    await stopInstanceLine().catch((error) => logger.warn({ err: error }, 'could not unregister'));
    await store.close();
    await db.close();
    logger.info('stopped cleanly');
    exit(0);
  };
  process.on('SIGTERM', () => void shutdown('SIGTERM'));
  process.on('SIGINT', () => void shutdown('SIGINT'));
}

main().catch(async (error: unknown) => {
  const message = error instanceof Error ? error.message : String(error);
  process.stderr.write(`kiln: could not start — ${message}\n`);
  // Exit 1 even if the event loop empties while a close below hangs.
  process.exitCode = 1;
  // Close what was opened, last first (the embedded database's lock included); each gets its own few seconds.
  for (const close of openedAtStart.reverse()) {
    await Promise.race([close().catch(() => {}), new Promise((done) => setTimeout(done, 3_000).unref())]);
  }
  process.exit(1);
});
