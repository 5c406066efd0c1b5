import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { NODE_FLAGS } from '../../src/runtime';

const read = (file: string) => readFileSync(new URL(`../../${file}`, import.meta.url), 'utf8');

describe('the compiled start runs with the same Node flags everywhere', () => {
  it.each([
    ['npm start', JSON.parse(read('package.json')).scripts.start as string],
    ['.ci/production-start', read('.ci/production-start')],
  ])('%s passes every flag of src/runtime.ts before dist/main.js', (_where, text) => {
    const line = text.split('\n').find((l) => l.includes('dist/main.js') && l.includes('node '));
    expect(line).toBeDefined();
    expect(line).toContain(`node ${NODE_FLAGS.join(' ')} dist/main.js`);
  });
});
