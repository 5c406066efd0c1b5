#!/usr/bin/env node
// Kiln's bundled sample build command (the default BUILD_COMMAND). It shows the protocol a real command speaks:
// the build arrives as JSON on stdin; JSON lines on stdout are events ({"type":"progress"|"log", ...}) and the
// final {"type":"result", "previewUrl", "credits"}; exit 0 means deployed. It "builds" a small page into
// $KILN_PREVIEW_DIR, which Kiln serves at $KILN_PREVIEW_URL.
// metadata.sampleStepMs sets the pace (default 400 ms per step); metadata.sampleFail makes it fail.
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';

const input = await new Promise((resolve) => {
  let text = '';
  process.stdin.on('data', (chunk) => {
    text += chunk;
  });
  process.stdin.on('end', () => resolve(text));
});
const build = JSON.parse(input);
const stepMs = Number(build.metadata?.sampleStepMs ?? 400);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const emit = (event) => process.stdout.write(`${JSON.stringify(event)}\n`);

const steps = [
  ['install', 'Installing dependencies'],
  ['build', 'Compiling the site'],
  ['optimize', 'Optimizing assets'],
  ['deploy', 'Publishing the preview'],
];
for (const [index, [phase, message]] of steps.entries()) {
  emit({ type: 'progress', phase, message, progress: index / steps.length });
  emit({ type: 'log', phase, message: `${message}…` });
  await sleep(stepMs);
  if (build.metadata?.sampleFail && phase === 'build') {
    process.stderr.write('error: the sample build was asked to fail (metadata.sampleFail)\n');
    process.exit(1);
  }
}
const page = `<!doctype html><meta charset="utf-8"><title>Kiln preview ${build.id}</title>
<h1>Built by Kiln</h1><p>Build <code>${build.id}</code> of project <code>${build.projectId}</code>.</p>`;
await writeFile(join(process.env.KILN_PREVIEW_DIR, 'index.html'), page);
emit({ type: 'progress', phase: 'deploy', message: 'Done', progress: 1 });
emit({
  type: 'result',
  previewUrl: process.env.KILN_PREVIEW_URL,
  credits: Number(build.metadata?.sampleCredits ?? 12),
});
