/**
 * The shapes of the resources the convenience methods return (SPEC sections 5 and 6). Hand-written and kept to
 * what a caller reads; Kiln's OpenAPI document (/openapi.json) is the full reference.
 */

export type BuildState = 'queued' | 'building' | 'deployed' | 'failed' | 'cancelled';

export interface Build {
  id: string;
  projectId: string;
  userId: string;
  state: BuildState;
  previousState: BuildState | null;
  validNextStates: BuildState[];
  createdAt: string;
  startedAt: string | null;
  finishedAt: string | null;
  durationMs: number | null;
  estimatedCredits: number;
  actualCredits: number | null;
  reservationId: string | null;
  previewUrl: string | null;
  error: string | null;
  reason: string | null;
  metadata: Record<string, unknown>;
}

export interface CreateBuildInput {
  projectId: string;
  userId: string;
  id?: string;
  estimatedCredits?: number;
  metadata?: Record<string, unknown>;
}

export interface Project {
  id: string;
  ownerId: string;
  name: string;
  framework: string | null;
  settings: Record<string, unknown>;
  allowConcurrentBuilds: boolean;
  webhookUrl: string | null;
  /** Only in the answer that set a new webhookUrl or rotated the secret: keep it, it is not shown again. */
  webhookSecret?: string;
  version: number;
  createdAt: string;
  updatedAt: string;
}

export interface CreateProjectInput {
  id?: string;
  ownerId: string;
  name: string;
  framework?: string;
  settings?: Record<string, unknown>;
  allowConcurrentBuilds?: boolean;
  webhookUrl?: string;
}

export interface CreditAccount {
  userId: string;
  plan: string;
  balance: number;
  reserved: number;
  available: number;
}

export interface GrantInput {
  userId: string;
  credits: number;
  reason: string;
  source: string;
  plan?: string;
}

export interface ReserveInput {
  userId: string;
  estimatedCredits: number;
  buildId?: string;
  reason?: string;
}

export interface Reservation {
  reservationId: string;
  reserved: number;
  expires: string;
  available: number;
}

export interface CommitResult {
  charged: number;
  refunded: number;
  newBalance: number;
}

export interface ReleaseResult {
  released: number;
  newBalance: number;
}
