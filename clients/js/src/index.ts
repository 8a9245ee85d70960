/**
 * @agentcast/client: a framework-free client for agentcast servers (docs/protocol.md).
 * React hooks are in `@agentcast/client/react`.
 */
export {
  AgentcastClient,
  fetchTicket,
  httpUrlOf,
  jwtExpiry,
  wsUrlOf,
  type Ack,
  type AgentcastEvent,
  type ClientOptions,
  type ConnectionState,
  type Subscription,
  type SubscriptionHandlers,
  type TokenSource,
  type WebSocketConstructor,
} from './client.js';
export { AgentcastError } from './errors.js';
/** The names of the dashboard's former stand-in client (`LiveEvent` is what its views type events with): aliases. */
export { AgentcastError as CommandError } from './errors.js';
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type LiveEvent = import('./client.js').AgentcastEvent<any>;
export { AUTH_CLOSE_CODES, CloseCode, TERMINAL_CLOSE_CODES, closeCodeOfStatus, isAuthClose, reconnectable } from './codes.js';
export { backoffDelay, type BackoffOptions } from './backoff.js';
export {
  ChatSession,
  applyChatEvent,
  chatStateFromSnapshot,
  emptyChatState,
  type ChatMessage,
  type ChatState,
  type ChatStatus,
  type ChatStreaming,
} from './chat.js';
export {
  TERMINAL_STATUSES,
  applyRunEvent,
  emptyRunState,
  runStateFromSnapshot,
  type NodeStatusValue,
  type RunAgent,
  type RunEdge,
  type RunGraphEdge,
  type RunLog,
  type RunNode,
  type RunSnapshot,
} from './runs.js';
export { RunStore, acquireChatSession, acquireRunStore, releaseChatSession, releaseRunStore, type EdgeFlow, type RunView } from './stores.js';
export { isChatEvent, isExecutionEvent, isWorkflowEvent, type ChatEvent, type ExecutionEvent, type TypedEvent, type WorkflowEvent } from './events.js';
export { CHAT_EVENT_TYPES, EXECUTION_EVENT_TYPES, WORKFLOW_EVENT_TYPES } from './generated/schemas.js';
export type * from './generated/schemas.js';
