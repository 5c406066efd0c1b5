import type { Build, NewEvent } from '../../db/builds';

/** Why a running build was stopped from outside. */
export type StopReason = 'cancelled' | 'timeout' | 'lease_lost' | 'hold_lost' | 'shutdown';

export interface ExecutionContext {
  build: Build;
  /** A directory of the build's own (cwd of the command; its preview/ is served at /previews/<id>/). */
  workspace: string;
  previewDir: string;
  previewUrl: string;
  /** Aborted with a StopReason when the build must stop now. */
  signal: AbortSignal;
  /** Report progress or a log line; written as the build's next event, in order. */
  emit(event: NewEvent): void;
}

export interface ExecutionResult {
  outcome: 'deployed' | 'failed';
  /** Why it failed: exit_code, timeout, cancelled, shutdown, lease_lost, hold_lost, spawn_error. */
  reason?: string;
  error?: string;
  previewUrl?: string;
  /** Credits the build reports it used (else Kiln prices it from its duration). */
  credits?: number;
}

/** Runs one build. `command` runs the operator's command; `external` runs nothing (runners use PATCH). */
export interface Executor {
  execute(context: ExecutionContext): Promise<ExecutionResult>;
}
