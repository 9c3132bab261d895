// A strict TypeScript app using rtstream-client as a front-end team would.
import { RealtimeClient, compareIds, type ClientState, type StreamEvent, type PresenceUser } from "rtstream-client";
import { StallWatch } from "rtstream-client/logic";

const client = new RealtimeClient({ wsUrl: "wss://example.test/dev", sseUrl: "https://example.test/events", getToken: async () => "jwt", topics: [] });
client.subscribe("transactions.new", { filters: { minAmount: 10 }, rewind: 20 });
client.subscribe("balance.updated");
const off: () => void = client.on("transactions.new", (event) => {
  const amount: number = event.data.amount; // typed payload per topic
  const id: string | null = event.id;
  console.log(amount, id, event.transport === "ws" || event.transport === "sse");
});
client.on("custom.topic", (event: StreamEvent) => console.log(event.data));
client.addEventListener("state", (e) => {
  const s: ClientState = e.detail;
  if (s.connection === "fallback-sse" && s.status === "open") console.log("on SSE");
});
client.addEventListener("replaygap", (e) => console.log(e.detail.since));
client.addEventListener("recovered", (e) => console.log(e.detail.transport));
client.start();
void client.presence().then((users: PresenceUser[]) => users.map((u) => u.userId));
client.unsubscribe("balance.updated");
off();
console.log(compareIds("9-0", "10-0") < 0, new StallWatch(10_000, 2).pong("1-0", 0));
client.stop();
