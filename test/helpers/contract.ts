import { readFileSync } from 'node:fs';
import { Ajv, type ValidateFunction } from 'ajv';
import addFormats from 'ajv-formats';

/**
 * The contract between the OpenAPI document (docs/openapi.json, which test/integration/openapi.test.ts keeps equal
 * to what the routes generate) and what Kiln really answers: every response the integration suites (through
 * startTestApp) and the end-to-end suites (every spawned process, through contract-preload.ts) receive is checked
 * here: its status must be one the operation documents, and a JSON body must match that status's schema.
 */

type Operation = { responses?: Record<string, { content?: Record<string, { schema?: object }> }> };
type Document = { paths: Record<string, Record<string, Operation>> };

interface Template {
  path: string;
  pattern: RegExp;
  /** Literal segments: /v1/builds/batch is preferred to /v1/builds/{id}. */
  literals: number;
}

export interface Received {
  method: string;
  /** The URL as requested (the query is ignored). */
  url: string;
  status: number;
  contentType?: string;
  /** Undefined when the body is not at hand (a stream): the status is still checked. */
  body?: string;
}

const DOCUMENT_FILE = new URL('../../docs/openapi.json', import.meta.url);

let shared: Contract | undefined;
/** The contract of the committed document, loaded once per worker. */
export function contract(): Contract {
  shared ??= new Contract(JSON.parse(readFileSync(DOCUMENT_FILE, 'utf8')) as Document);
  return shared;
}

export class Contract {
  private readonly templates: Template[];
  private readonly ajv = new Ajv({ strict: false, allErrors: true });
  private readonly compiled = new Map<string, ValidateFunction>();

  constructor(private readonly document: Document) {
    addFormats.default(this.ajv);
    this.templates = Object.keys(document.paths).map((path) => {
      const segments = path.split('/');
      const source = segments
        .map((s) => (s.startsWith('{') ? '[^/]+' : s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')))
        .join('/');
      return { path, pattern: new RegExp(`^${source}$`), literals: segments.filter((s) => !s.startsWith('{')).length };
    });
  }

  /**
   * The documented path a URL is an instance of, if any, among those that take `method` (as the router sees it:
   * PATCH /v1/projects/batch is /v1/projects/{id}, since /v1/projects/batch takes only GET).
   */
  templateOf(url: string, method?: string): string | undefined {
    let path = url.split('?')[0];
    try {
      path = decodeURI(path);
    } catch {
      return undefined;
    }
    let best: Template | undefined;
    for (const t of this.templates) {
      if (method && !this.document.paths[t.path][method]) continue;
      if (t.pattern.test(path) && (!best || t.literals > best.literals)) best = t;
    }
    return best?.path;
  }

  /**
   * What is wrong with one response, or undefined. Responses of routes the document does not describe (hidden
   * routes, unknown paths, methods a path does not take) are not its business.
   */
  violation(received: Received): string | undefined {
    // A HEAD answers what its GET would, without the body.
    const head = received.method.toUpperCase() === 'HEAD';
    const method = head ? 'get' : received.method.toLowerCase();
    const path = this.templateOf(received.url, method);
    const operation = path ? this.document.paths[path][method] : undefined;
    if (!path || !operation) return undefined;
    const where = `${received.method} ${received.url} → ${received.status}`;
    const response = operation.responses?.[String(received.status)];
    if (!response) {
      const documented = Object.keys(operation.responses ?? {}).join(', ');
      return `${where}: status not documented for ${method.toUpperCase()} ${path} (documented: ${documented}); body ${received.body?.slice(0, 300)}`;
    }
    const schema = response.content?.['application/json']?.schema;
    if (!schema || head || received.body === undefined) return undefined;
    if (received.body === '' && received.status === 204) return undefined;
    if (!received.contentType?.startsWith('application/json')) {
      return `${where}: documented as application/json, sent ${received.contentType ?? 'no content-type'}`;
    }
    let body: unknown;
    try {
      body = JSON.parse(received.body);
    } catch {
      return `${where}: the body is not JSON: ${received.body.slice(0, 200)}`;
    }
    const key = `${path} ${method} ${received.status}`;
    let validate = this.compiled.get(key);
    if (!validate) {
      validate = this.ajv.compile(schema);
      this.compiled.set(key, validate);
    }
    if (validate(body)) return undefined;
    const errors = (validate.errors ?? []).map((e) => `${e.instancePath || '/'} ${e.message}`).join('; ');
    return `${where}: body does not match the document (${errors}): ${received.body.slice(0, 300)}`;
  }
}
