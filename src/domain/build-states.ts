/**
 * The build state machine (SPEC section 5), the one source for the API's checks, `validNextStates`, the tests,
 * and the test that holds the SQL trigger to it.
 */
export const BUILD_STATES = ['queued', 'building', 'deployed', 'failed', 'cancelled'] as const;
export type BuildState = (typeof BUILD_STATES)[number];

/** Every allowed transition: queued → building | cancelled; building → deployed | failed | cancelled. */
export const TRANSITIONS: Readonly<Record<BuildState, readonly BuildState[]>> = {
  queued: ['building', 'cancelled'],
  building: ['deployed', 'failed', 'cancelled'],
  deployed: [],
  failed: [],
  cancelled: [],
};

/** States that hold the project's one active slot (and the user's credits). */
export const ACTIVE_STATES: readonly BuildState[] = ['queued', 'building'];

export function validNextStates(state: BuildState): BuildState[] {
  return [...TRANSITIONS[state]];
}

export function canTransition(from: BuildState, to: BuildState): boolean {
  return TRANSITIONS[from].includes(to);
}

export function isTerminal(state: BuildState): boolean {
  return TRANSITIONS[state].length === 0;
}

/** The event type written when a build enters `state`. */
export function eventTypeFor(state: BuildState): 'queued' | 'started' | 'deployed' | 'failed' | 'cancelled' {
  return state === 'building' ? 'started' : state;
}

/**
 * Seconds until the active build is likely done, from the project's typical duration (or `fallbackS` without
 * history) minus what it has run so far; never below 1.
 */
export function etaSeconds(
  active: { state: BuildState; startedAt: Date | null },
  typicalDurationS: number | undefined,
  fallbackS: number,
  now: Date,
): number {
  const typical = typicalDurationS ?? fallbackS;
  const elapsed =
    active.state === 'building' && active.startedAt ? (now.getTime() - active.startedAt.getTime()) / 1000 : 0;
  return Math.max(1, Math.ceil(typical - elapsed));
}
