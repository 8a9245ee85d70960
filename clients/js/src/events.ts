/**
 * Typed events: the vocabularies of docs/schemas/ (generated into
 * `generated/schemas.ts`) as unions discriminated by `type`, and guards that narrow an
 * {@link AgentcastEvent} to them.
 *
 * ```ts
 * onEvent(ev) {
 *   if (isWorkflowEvent(ev) && ev.type === 'node_status') console.log(ev.data.node_id, ev.data.status);
 * }
 * ```
 */
import type { AgentcastEvent } from './client.js';
import {
  CHAT_EVENT_TYPES,
  EXECUTION_EVENT_TYPES,
  WORKFLOW_EVENT_TYPES,
  type ChatEventDataMap,
  type ExecutionEventDataMap,
  type WorkflowEventDataMap,
} from './generated/schemas.js';

/** The event of each type of vocabulary `M`, `data` typed. */
export type TypedEvent<M> = {
  [K in keyof M & string]: Omit<AgentcastEvent, 'type' | 'data'> & { type: K; data: M[K] };
}[keyof M & string];

/** Seed 004's events on `workflow:<id>`. */
export type WorkflowEvent = TypedEvent<WorkflowEventDataMap>;
/** Seed 000's events on `execution:<id>`. */
export type ExecutionEvent = TypedEvent<ExecutionEventDataMap>;
/** The events of `chat:<conversation_id>`. */
export type ChatEvent = TypedEvent<ChatEventDataMap>;

const workflowTypes: ReadonlySet<string> = new Set(WORKFLOW_EVENT_TYPES);
const executionTypes: ReadonlySet<string> = new Set(EXECUTION_EVENT_TYPES);
const chatTypes: ReadonlySet<string> = new Set(CHAT_EVENT_TYPES);

/**
 * A seed 004 event of a `workflow:` topic (the server validates their data on publish).
 * The gateway's own run events (`publisher_lost`, `run_paused`, …) are not.
 */
export function isWorkflowEvent(ev: AgentcastEvent): ev is AgentcastEvent & WorkflowEvent {
  return ev.topic.startsWith('workflow:') && workflowTypes.has(ev.type);
}

/** A seed 000 event of an `execution:` topic. */
export function isExecutionEvent(ev: AgentcastEvent): ev is AgentcastEvent & ExecutionEvent {
  return ev.topic.startsWith('execution:') && executionTypes.has(ev.type);
}

/** A `chat:message`, `chat:queued` or `chat:streaming` … event of a `chat:` topic. */
export function isChatEvent(ev: AgentcastEvent): ev is AgentcastEvent & ChatEvent {
  return ev.topic.startsWith('chat:') && chatTypes.has(ev.type);
}
