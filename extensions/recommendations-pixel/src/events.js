// The events the recommendations backend learns from; everything else stays in the browser.
export const FORWARDED_EVENTS = [
  "product_viewed",
  "product_added_to_cart",
  "product_removed_from_cart",
  "checkout_completed",
];

// The custom events a theme publishes about the backend's answers, for attribution:
//   Shopify.analytics.publish("recommendations_viewed", {recommendation_id, intent, product_ids: [...]})
//   Shopify.analytics.publish("recommendations_clicked", {recommendation_id, intent, product_id, position})
// A subscriber receives what was published as the event's `customData`.
export const RECOMMENDATION_EVENTS = ["recommendations_viewed", "recommendations_clicked"];

// Keep only what the backend reads, so no personal data leaves the storefront.
export function slimEvent(event) {
  const base = {id: event.id, name: event.name, timestamp: event.timestamp, clientId: event.clientId};
  if (RECOMMENDATION_EVENTS.includes(event.name)) {
    const custom = event.customData || {};
    const shown = event.name === "recommendations_viewed"
      ? {product_ids: custom.product_ids}
      : {product_id: custom.product_id, position: custom.position};
    return {...base, customData: {recommendation_id: custom.recommendation_id, intent: custom.intent, ...shown}};
  }
  const data = event.data || {};
  const variant = (v) => v && {id: v.id, price: v.price, product: v.product && {id: v.product.id}};
  if (event.name === "checkout_completed") {
    const checkout = data.checkout || {};
    return {...base, data: {checkout: {
      order: checkout.order ? {id: checkout.order.id} : undefined,
      lineItems: (checkout.lineItems || []).map((line) => ({quantity: line.quantity, variant: variant(line.variant)})),
    }}};
  }
  const productVariant = data.productVariant || (data.cartLine && data.cartLine.merchandise);
  return {...base, data: {productVariant: variant(productVariant)}};
}

// Subscribe to the forwarded events and post each with sendBeacon (it survives page unloads).
export function forwardEvents({analytics, browser, init, settings}) {
  const shop = init.data.shop.myshopifyDomain;
  const url = `${settings.collectUrl}?shop=${encodeURIComponent(shop)}`;
  for (const name of [...FORWARDED_EVENTS, ...RECOMMENDATION_EVENTS]) {
    analytics.subscribe(name, (event) => browser.sendBeacon(url, JSON.stringify(slimEvent(event))));
  }
}
