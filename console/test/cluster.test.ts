/**
 * Cluster mode: an api-server and two chat servers on a Redis Cluster.
 * Bob's chat server is SIGKILLed while both users chat. Bob's page notices,
 * reconnects by itself to the surviving server, resumes, and shows every
 * message exactly once (counted in the DOM, per body) on both pages; his
 * send during the outage goes from pending to acknowledged. The cluster
 * view then shows the dead server gone and Bob's session on the survivor.
 */
import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, expect, it } from 'vitest';
import {
  createRoom,
  launchBrowser,
  messagesWithBody,
  openRoom,
  recordStatuses,
  roomItem,
  screenshot,
  send,
  signedIn,
  startCluster,
  statusesOf,
  stopAll,
  until,
  type ClusterSystem,
  type UserPage,
} from './harness.js';

// Not the ids of the SDK's fault run, which may have used the same Redis Cluster seconds ago.
const SERVERS = ['chat-1', 'chat-2'];

let cluster: ClusterSystem | undefined;
let browser: Browser;

beforeAll(async () => {
  cluster = await startCluster(SERVERS);
  browser = await launchBrowser();
});

afterAll(async () => {
  await browser?.close();
  await stopAll();
  cluster?.stopRedis();
});

const text = async (p: UserPage, testId: string) => (await p.page.getByTestId(testId).first().textContent()) ?? '';

it("reconnects by itself when the user's chat server is SIGKILLed and shows every message once", async () => {
  const system = cluster!;
  // Users of their own: the Redis Cluster may keep rooms of earlier runs.
  const run = Math.random().toString(36).slice(2, 8);
  const alice = await signedIn(browser, system.page, `alice-${run}`);
  const bob = await signedIn(browser, system.page, `bob-${run}`);
  for (const p of [alice, bob]) await recordStatuses(p.page);
  const killed = await text(bob, 'session-server');
  const survivor = SERVERS.find((s) => s !== killed)!;
  console.log(`[console cluster] alice on ${await text(alice, 'session-server')}, bob on ${killed}: killing ${killed}`);

  await createRoom(alice.page, 'ops', bob.user);
  await send(alice.page, 'before 1');
  await send(alice.page, 'before 2');
  await until(() => roomItem(bob.page, 'ops').count(), 1, 15_000);
  await openRoom(bob.page, 'ops');
  await send(bob.page, 'bob before');
  await until(() => messagesWithBody(alice.page, 'bob before').count(), 1);

  // Bob's cluster view: two ready servers, his session on the one to be killed.
  await bob.page.getByTestId('tab-cluster').click();
  for (const id of SERVERS) {
    await until(() => bob.page.locator(`[data-testid=server-row][data-server-id=${id}]`).getAttribute('data-state'), 'ready');
  }
  await until(() => bob.page.locator('[data-testid=server-row][data-current=true]').getAttribute('data-server-id'), killed);
  await bob.page.getByTestId('tab-chat').click();
  await until(() => bob.page.getByTestId('room-title').textContent(), 'ops');

  // SIGKILL Bob's chat server; both keep chatting.
  system.chats.get(killed)!.kill('SIGKILL');
  await send(bob.page, 'bob during');
  for (const body of ['during 1', 'during 2', 'during 3']) await send(alice.page, body);

  // Bob's page moves to the surviving server by itself.
  await until(() => text(bob, 'session-server'), survivor, 30_000);
  await until(() => bob.page.getByTestId('connection-state').getAttribute('data-state'), 'connected', 30_000);
  await send(alice.page, 'after 1');
  await send(bob.page, 'bob after');

  const bodies = ['before 1', 'before 2', 'bob before', 'bob during', 'during 1', 'during 2', 'during 3', 'after 1', 'bob after'];
  for (const p of [alice, bob]) {
    for (const body of bodies) await until(() => messagesWithBody(p.page, body).count(), 1, 20_000);
  }
  for (const body of bodies) {
    const own = body.startsWith('bob') ? bob : alice;
    await until(() => messagesWithBody(own.page, body).getAttribute('data-status'), 'acked', 20_000);
  }
  // Bob's send during the outage waited as pending, then was acknowledged.
  const during = await statusesOf(bob.page, 'bob during');
  expect(during[0]).toBe('pending');
  expect(during.at(-1)).toBe('acked');

  // Nothing arrives twice later either (a resume replays what was missed).
  await new Promise((r) => setTimeout(r, 1_500));
  const shown = await Promise.all([alice, bob].map((p) => p.page.getByTestId('message-body').allTextContents()));
  expect([...shown[0]!].sort(), "alice's page").toEqual([...bodies].sort());
  // Both pages in the same order: the room's seq order.
  expect(shown[1], "bob's page").toEqual(shown[0]);

  // The cluster view: the dead server is gone, Bob's session is on the survivor.
  await bob.page.getByTestId('tab-cluster').click();
  await until(() => bob.page.locator(`[data-testid=server-row][data-server-id=${killed}]`).getAttribute('data-state'), 'gone', 15_000);
  await until(() => bob.page.locator('[data-testid=server-row][data-current=true]').getAttribute('data-server-id'), survivor);
  await screenshot(bob.page, 'cluster-failover');

  for (const p of [alice, bob]) {
    expect(p.dialogs).toEqual([]);
    expect(p.errors).toEqual([]);
  }
});
