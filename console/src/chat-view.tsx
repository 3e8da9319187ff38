/**
 * The chat view: the room list beside the open room (one of the two at
 * phone width).
 *
 * Everything users typed is rendered as text by Preact; nothing in the
 * console sets HTML.
 */
import { RoomList } from './room-list.js';
import { RoomView } from './room-view.js';
import type { ConsoleStore } from './store.js';

export function ChatView({ store }: { store: ConsoleStore }) {
  const open = store.openRoom ? store.rooms.get(store.openRoom) : undefined;
  return (
    <div class="chat" data-pane={open ? 'room' : 'rooms'}>
      <RoomList store={store} />
      {open ? (
        <RoomView key={open.room.id} store={store} r={open} />
      ) : (
        <section class="room empty" aria-label="No room open">
          <p>Pick a room on the left, or create one.</p>
        </section>
      )}
    </div>
  );
}
