// The chat page's durable outbox: what the user typed that the server has not
// acknowledged yet, kept in IndexedDB so a closed tab loses none (docs/client.md,
// "The outbox across closed tabs"). ChatClient's own outbox survives reconnects;
// this one survives the page. Each entry keeps its client id, so when a page of
// the same user opens again and sends it, the server stores it once (`send` is
// idempotent per user and id, PROTOCOL 6) and answers `duplicate: true` if an
// earlier page's send had reached it after all.

const DB_NAME = "tether-outbox";
const STORE = "sends";

function done(request) {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

function committed(tx) {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error);
  });
}

export class DurableOutbox {
  /** One user's entries; other users of the same browser never see them. */
  constructor(userId) {
    this.userId = userId;
    this.db = this.open();
  }

  async open() {
    if (!globalThis.indexedDB) return null;
    const request = indexedDB.open(DB_NAME, 1);
    request.onupgradeneeded = () => {
      const store = request.result.createObjectStore(STORE, { keyPath: "id" });
      store.createIndex("user", "user");
    };
    try {
      return await done(request);
    } catch {
      return null; // storage refused (a private window, say): the page's memory only
    }
  }

  async run(mode, work) {
    const db = await this.db;
    if (!db) return undefined;
    const tx = db.transaction(STORE, mode);
    const result = work(tx.objectStore(STORE));
    await committed(tx);
    return result && "result" in result ? result.result : result;
  }

  /** Keep a send until it is acknowledged: {id, conversation, body, options}. */
  keep(entry) {
    return this.run("readwrite", (store) =>
      store.put({ ...entry, user: this.userId, created: Date.now() }),
    ).catch(() => undefined);
  }

  forget(id) {
    return this.run("readwrite", (store) => store.delete(id)).catch(() => undefined);
  }

  /** This user's kept sends, oldest first. */
  async entries() {
    try {
      const all = (await this.run("readonly", (store) => store.index("user").getAll(this.userId))) || [];
      return all.sort((a, b) => a.created - b.created);
    } catch {
      return [];
    }
  }
}
