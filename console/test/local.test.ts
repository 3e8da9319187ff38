/**
 * Local mode, as a newcomer uses it: `chat-local`, two browser contexts
 * signed in as two users. One creates a room with the other; they chat
 * both ways and each sees the other typing, an unread badge and a read
 * receipt; sends go from pending to acknowledged; online dots follow
 * presence; history pages back with `before`. Screenshots of the chat view,
 * the cluster view and the phone-width layout are taken on the way.
 */
import { expect, it } from 'vitest';
import {
  asUser,
  createRoom,
  devToken,
  messagesWithBody,
  openConsole,
  openRoom,
  PHONE,
  recordStatuses,
  roomItem,
  screenshot,
  send,
  signedIn,
  statusesOf,
  typeUntilSeen,
  until,
  type UserPage,
  localSystemForFile,
} from './harness.js';

const local = localSystemForFile();

const text = (p: UserPage, testId: string) => p.page.getByTestId(testId).first().textContent();
const badge = (p: UserPage, room: string) => roomItem(p.page, room).getAttribute('data-unread');

it('two users chat both ways and see typing, unread badges and read receipts', async () => {
  const alice = await signedIn(local.browser, local.system.page, 'alice');
  const bob = await signedIn(local.browser, local.system.page, 'bob');

  // Alice creates a room with Bob and writes; her send shows as pending, then acknowledged.
  await createRoom(alice.page, 'general', 'bob');
  await recordStatuses(alice.page);
  await send(alice.page, 'hi bob');
  await until(() => messagesWithBody(alice.page, 'hi bob').getAttribute('data-status'), 'acked');
  expect(await statusesOf(alice.page, 'hi bob')).toEqual(['pending', 'acked']);

  // Bob learns of the room from the message, with an unread badge.
  await until(() => badge(bob, 'general'), '1');
  await until(() => roomItem(bob.page, 'general').getByTestId('unread-badge').textContent(), '1');

  // Bob opens it: the badge goes, and Alice gets a read receipt.
  await openRoom(bob.page, 'general');
  await until(() => messagesWithBody(bob.page, 'hi bob').count(), 1);
  await until(() => badge(bob, 'general'), '0');
  await until(() => messagesWithBody(alice.page, 'hi bob').getByTestId('read-receipt').textContent(), 'Seen by bob');

  // Online dots: both are connected.
  await until(() => alice.page.locator('[data-testid=member][data-user=bob]').getAttribute('data-online'), 'true');
  await until(() => bob.page.locator('[data-testid=member][data-user=alice]').getAttribute('data-online'), 'true');

  // Bob types: Alice sees it; then he sends, and it reaches her once.
  await typeUntilSeen(bob, alice, 'hello alice');
  await send(bob.page, 'hello alice');
  await until(() => messagesWithBody(bob.page, 'hello alice').getAttribute('data-status'), 'acked');
  await until(() => messagesWithBody(alice.page, 'hello alice').count(), 1);
  await until(() => text(alice, 'typing-indicator'), '');
  // Alice has the room open at its newest message: it is read at once.
  await until(() => messagesWithBody(bob.page, 'hello alice').getByTestId('read-receipt').textContent(), 'Seen by alice');

  // Alice looks at another room; Bob writes again: Alice gets a badge.
  await createRoom(alice.page, 'notes', '');
  await send(bob.page, 'are you there?');
  await until(() => badge(alice, 'general'), '1');
  await until(() => alice.page.getByTestId('tab-chat').textContent(), 'Chat (1)');
  await screenshot(alice.page, 'chat-unread');

  // She opens it: badge gone, Bob sees the receipt; Alice types, Bob sees it.
  await openRoom(alice.page, 'general');
  await until(() => badge(alice, 'general'), '0');
  await until(() => messagesWithBody(bob.page, 'are you there?').getByTestId('read-receipt').textContent(), 'Seen by alice');
  await typeUntilSeen(alice, bob, 'yes');
  await send(alice.page, 'yes');
  await until(() => messagesWithBody(bob.page, 'yes').count(), 1);
  await until(() => messagesWithBody(alice.page, 'yes').getAttribute('data-status'), 'acked');

  // Each message is shown exactly once on both pages.
  for (const body of ['hi bob', 'hello alice', 'are you there?', 'yes']) {
    expect(await messagesWithBody(alice.page, body).count(), `alice: ${body}`).toBe(1);
    expect(await messagesWithBody(bob.page, body).count(), `bob: ${body}`).toBe(1);
  }
  // For the screenshot: Bob is typing again.
  await alice.page.getByTestId('composer-input').blur();
  await typeUntilSeen(bob, alice, 'great');
  await screenshot(alice.page, 'chat');
  await bob.page.getByTestId('composer-input').fill('');

  // Bob's phone: a second session of Bob at phone width, one pane at a time.
  const phone = await signedIn(local.browser, local.system.page, 'bob', PHONE);
  await expect(phone.page.getByTestId('room-list').isVisible()).resolves.toBe(true);
  await openRoom(phone.page, 'general');
  await expect(phone.page.getByTestId('room-list').isVisible()).resolves.toBe(false);
  await until(() => messagesWithBody(phone.page, 'yes').count(), 1);
  await phone.page.getByTestId('composer-input').blur();
  await screenshot(phone.page, 'phone');
  await phone.page.getByTestId('toggle-members').click();
  await until(() => phone.page.getByTestId('members-panel').isVisible(), true);
  await phone.page.getByTestId('back-to-rooms').click();
  await until(() => phone.page.getByTestId('room-list').isVisible(), true);
  await phone.context.close();

  // The cluster view: both chat servers, and where Alice's session is.
  await alice.page.getByTestId('tab-cluster').click();
  await until(() => alice.page.getByTestId('server-row').count(), 2);
  const placed = await text(alice, 'session-server');
  await until(() => alice.page.locator('[data-testid=server-row][data-current=true]').getAttribute('data-server-id'), placed);
  await until(() => alice.page.locator('[data-testid=server-row][data-state=ready]').count(), 2);
  await screenshot(alice.page, 'cluster');
  await alice.page.getByTestId('tab-chat').click();

  // Bob leaves: Alice sees him go offline (a presence event).
  await bob.page.getByTestId('sign-out').click();
  await until(() => alice.page.locator('[data-testid=member][data-user=bob]').getAttribute('data-online'), 'false');

  for (const p of [alice, bob]) {
    expect(p.dialogs).toEqual([]);
    expect(p.errors).toEqual([]);
  }
  await alice.context.close();
  await bob.context.close();
});

it('scrolls back through history a page at a time', async () => {
  const room = await asUser<{ id: string }>(local.system.api, 'carol', 'POST', '/v1/rooms', { name: 'archive', members: ['dave'] });
  for (let i = 1; i <= 120; i++) {
    await asUser(local.system.api, 'dave', 'POST', `/v1/rooms/${room.id}/messages`, { body: `old message ${i}` });
  }
  const carol = await signedIn(local.browser, local.system.page, 'carol');
  await until(() => badge(carol, 'archive'), '120');
  await until(() => roomItem(carol.page, 'archive').getByTestId('unread-badge').textContent(), '99+');
  await openRoom(carol.page, 'archive');
  // The latest page, scrolled to the newest message (so it is read).
  await until(() => carol.page.getByTestId('message').count(), 50);
  await until(() => badge(carol, 'archive'), '0');
  expect(await carol.page.getByTestId('message').first().getAttribute('data-seq')).toBe('71');
  // Scrolling to the top loads the page before it; the button does too.
  await carol.page.getByTestId('message-list').evaluate((el) => (el.scrollTop = 0));
  await until(() => carol.page.getByTestId('message').count(), 100);
  await carol.page.getByTestId('load-older').focus();
  await carol.page.keyboard.press('Enter');
  await until(() => carol.page.getByTestId('message').count(), 120);
  await until(() => carol.page.getByTestId('history-start').isVisible(), true);
  const seqs = await carol.page.getByTestId('message').evaluateAll((els) => els.map((e) => Number(e.getAttribute('data-seq'))));
  expect(seqs).toEqual(Array.from({ length: 120 }, (_, i) => i + 1));
  expect(carol.errors).toEqual([]);
  await carol.context.close();
});

it('works with the keyboard alone: focus order, Enter to send, visible focus', async () => {
  const erin = await openConsole(local.browser, local.system.page);
  const { page } = erin;
  const focused = () => page.evaluate(() => document.activeElement?.getAttribute('data-testid') ?? document.activeElement?.tagName ?? '');
  // The user name field has the focus; Enter signs in.
  await until(focused, 'signin-user');
  await page.keyboard.type('erin');
  await page.keyboard.press('Enter');
  await until(() => page.getByTestId('connection-state').getAttribute('data-state'), 'connected');

  // Tab order: the views, sign-out, then creating a room.
  const order: string[] = [];
  for (let i = 0; i < 6; i++) {
    await page.keyboard.press('Tab');
    order.push(await focused());
  }
  expect(order).toEqual(['tab-chat', 'tab-cluster', 'sign-out', 'new-room-name', 'new-room-members', 'create-room']);
  // Focus is visible (:focus-visible draws an outline).
  expect(await page.evaluate(() => getComputedStyle(document.activeElement!).outlineStyle)).toBe('solid');

  // Create a room from the keyboard; the composer gets the focus.
  await page.keyboard.press('Shift+Tab');
  await page.keyboard.press('Shift+Tab');
  await page.keyboard.type('kbd');
  await page.keyboard.press('Tab');
  await page.keyboard.type('frank');
  await page.keyboard.press('Enter');
  await until(() => page.getByTestId('room-title').textContent(), 'kbd');
  await until(focused, 'composer-input');

  // Shift+Enter is a new line, Enter sends.
  await page.keyboard.type('line one');
  await page.keyboard.press('Shift+Enter');
  await page.keyboard.type('line two');
  await page.keyboard.press('Enter');
  await until(() => messagesWithBody(page, 'line one\nline two').getAttribute('data-status'), 'acked');
  expect(await page.getByTestId('composer-input').inputValue()).toBe('');

  // After the composer: Send, then the members panel.
  await page.keyboard.press('Tab');
  expect(await focused()).toBe('send-button');
  await page.keyboard.press('Tab');
  expect(await focused()).toBe('add-member-input');
  // Back to the list: the room list items are buttons in the tab order.
  await page.getByTestId('new-room-name').focus();
  for (let i = 0; i < 3; i++) await page.keyboard.press('Tab');
  expect(await focused()).toBe('room-item');
  expect(erin.errors).toEqual([]);
  await erin.context.close();
});

it('signs in with a pasted token, and says why a token is refused', async () => {
  const visitor = await openConsole(local.browser, local.system.page);
  const { page } = visitor;
  await page.getByTestId('signin-token').fill('not-a-token');
  await page.getByTestId('signin-token-submit').click();
  await until(() => page.getByTestId('signin-error').textContent(), 'That is not a token this console can read (a JWT with a "sub" claim).');
  // A JWT the server did not sign.
  const forged = ['{"alg":"HS256","typ":"JWT"}', '{"sub":"mallory","exp":9999999999}']
    .map((part) => Buffer.from(part).toString('base64url'))
    .concat('c2lnbmF0dXJl')
    .join('.');
  await page.getByTestId('signin-token').fill(forged);
  await page.getByTestId('signin-token-submit').click();
  await until(async () => (await page.getByTestId('signin-error').textContent())?.startsWith('The server refused the token'), true);
  // A real one: signed in as its `sub`.
  await page.getByTestId('signin-token').fill(await devToken(local.system.api, 'grace'));
  await page.getByTestId('signin-token-submit').click();
  await until(() => page.getByTestId('connection-state').getAttribute('data-state'), 'connected');
  await until(() => page.getByTestId('current-user').textContent(), 'grace');
  // A reload keeps the session (per tab).
  await page.reload();
  await until(() => page.getByTestId('current-user').textContent(), 'grace');
  await until(() => page.getByTestId('connection-state').getAttribute('data-state'), 'connected');
  expect(visitor.dialogs).toEqual([]);
  expect(visitor.errors).toEqual([]);
  await visitor.context.close();
});
