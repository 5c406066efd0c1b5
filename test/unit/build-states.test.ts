import { describe, expect, it } from 'vitest';
import {
  BUILD_STATES,
  canTransition,
  etaSeconds,
  eventTypeFor,
  isTerminal,
  validNextStates,
} from '../../src/domain/build-states';

const ALLOWED = new Set([
  'queued>building',
  'queued>cancelled',
  'building>deployed',
  'building>failed',
  'building>cancelled',
]);

describe('build state machine', () => {
  for (const from of BUILD_STATES) {
    for (const to of BUILD_STATES) {
      const allowed = ALLOWED.has(`${from}>${to}`);
      it(`${from} → ${to} is ${allowed ? 'allowed' : 'refused'}`, () => {
        expect(canTransition(from, to)).toBe(allowed);
        expect(validNextStates(from).includes(to)).toBe(allowed);
      });
    }
  }

  it('has three terminal states', () => {
    expect(BUILD_STATES.filter(isTerminal)).toEqual(['deployed', 'failed', 'cancelled']);
  });

  it('names the event of each entered state', () => {
    expect(BUILD_STATES.map(eventTypeFor)).toEqual(['queued', 'started', 'deployed', 'failed', 'cancelled']);
  });
});

describe('etaSeconds', () => {
  const now = new Date('2026-01-01T00:10:00Z');
  it('uses the typical duration minus the time already spent building', () => {
    expect(etaSeconds({ state: 'building', startedAt: new Date('2026-01-01T00:09:00Z') }, 100, 120, now)).toBe(40);
    expect(etaSeconds({ state: 'queued', startedAt: null }, 100, 120, now)).toBe(100);
  });
  it('falls back without history and never goes below 1', () => {
    expect(etaSeconds({ state: 'queued', startedAt: null }, undefined, 120, now)).toBe(120);
    expect(etaSeconds({ state: 'building', startedAt: new Date('2026-01-01T00:00:00Z') }, 100, 120, now)).toBe(1);
  });
});
