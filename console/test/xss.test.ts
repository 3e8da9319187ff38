/**
 * Bad input: what users type is shown as typed and never runs. Message
 * bodies and room names carrying markup go through the server to another
 * user's page; user ids carrying markup are refused (user ids are
 * `[A-Za-z0-9_.-]`), and the error that quotes them must be text too.
 * Nothing may execute: `window.__xss` stays undefined, no dialog opens, no
 * element of the payloads appears in the DOM.
 */
import { expect, it } from 'vitest';
import {
  createRoom,
  messagesWithBody,
  openConsole,
  openRoom,
  roomItem,
  send,
  signedIn,
  until,
  type UserPage,
  localSystemForFile,
} from './harness.js';

const PAYLOADS = [
  '<img src=x onerror=window.__xss=1>',
  '</script><script>window.__xss=1</script>',
  '<svg onload="window.__xss=1"></svg>',
  '"><iframe src="javascript:window.top.__xss=1"></iframe>',
  '<img src=x onerror=alert(1)>',
  '{{constructor.constructor("window.__xss=1")()}} &lt;b&gt;bold&lt;/b&gt; &amp;',
];

const local = localSystemForFile();

/** Nothing ran and nothing of the markup became an element. */
async function assertInert(p: Pick<UserPage, 'page' | 'dialogs' | 'errors'>): Promise<void> {
  expect(await p.page.evaluate(() => (window as { __xss?: unknown }).__xss)).toBeUndefined();
  expect(p.dialogs).toEqual([]);
  expect(p.errors).toEqual([]);
  expect(await p.page.locator('#app img, #app svg, #app iframe, #app script').count()).toBe(0);
}

it('shows user ids with markup in the error, as typed, and runs nothing', async () => {
  const visitor = await openConsole(local.browser, local.system.page);
  for (const user of [PAYLOADS[0]!, PAYLOADS[1]!]) {
    await visitor.page.getByTestId('signin-user').fill(user);
    await visitor.page.getByTestId('signin-submit').click();
    await until(() => visitor.page.getByTestId('signin-error').textContent(), `"${user}" is not a valid user id: use 1-64 characters of letters, digits, "_", "." and "-".`);
  }
  await assertInert(visitor);
  await visitor.context.close();
});

it('shows bodies, room names and member ids with markup as typed, on both sides, and runs nothing', async () => {
  const alice = await signedIn(local.browser, local.system.page, 'alice');
  const bob = await signedIn(local.browser, local.system.page, 'bob');

  // Room names: created by Alice, seen by Bob.
  for (const name of PAYLOADS.slice(0, 3)) await createRoom(alice.page, name, 'bob');
  const room = PAYLOADS[1]!;
  await openRoom(alice.page, room);

  // Bodies: sent by Alice, received by Bob.
  for (const body of PAYLOADS) await send(alice.page, body);
  for (const body of PAYLOADS) {
    await until(() => messagesWithBody(alice.page, body).getAttribute('data-status'), 'acked');
  }
  await until(() => bob.page.getByTestId('room-item').count(), 3, 15_000);
  for (const name of PAYLOADS.slice(0, 3)) {
    expect(await roomItem(bob.page, name).getByTestId('room-name').textContent()).toBe(name);
  }
  await openRoom(bob.page, room);
  expect(await bob.page.getByTestId('room-title').textContent()).toBe(room);
  for (const body of PAYLOADS) {
    await until(() => messagesWithBody(bob.page, body).count(), 1);
    expect(await messagesWithBody(bob.page, body).getByTestId('message-body').textContent()).toBe(body);
  }

  // Member ids: refused before anything is sent, quoted as text.
  await bob.page.getByTestId('add-member-input').fill(PAYLOADS[0]!);
  await bob.page.getByTestId('add-member-button').click();
  await until(() => bob.page.getByTestId('add-member-error').textContent(), `"${PAYLOADS[0]}" is not a valid user id: use 1-64 characters of letters, digits, "_", "." and "-".`);
  await alice.page.getByTestId('new-room-name').fill('x');
  await alice.page.getByTestId('new-room-members').fill(PAYLOADS[1]!);
  await alice.page.getByTestId('create-room').click();
  // The members field splits on spaces: the first piece is quoted.
  await until(() => alice.page.getByTestId('create-room-error').textContent(), `"</script><script>window.__xss=1</script>" is not a valid user id: use 1-64 characters of letters, digits, "_", "." and "-".`);

  for (const p of [alice, bob]) await assertInert(p);
  await alice.context.close();
  await bob.context.close();
});
